"""Teacher outputs reduced to cache targets: precision of the vocabulary projection under autocast."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import make_model, spread

from skdcache.cache.format import TargetSpec
from skdcache.reduce import teacher_forward
from skdcache.teachers import TeacherSpec, load_teacher


@pytest.mark.parametrize("head", ["causal", "mlm"])
def test_token_logits_are_float32_under_bf16_autocast(tmp_path: Path, head: str):
    """Under autocast the body runs in bf16 but the vocabulary projection in float32: the logits are not
    bf16-rounded (the plain autocast forward's are), and they equal a float32 projection of the same states."""
    teacher = load_teacher(TeacherSpec("t", str(spread(make_model(tmp_path / "t", head), 4.0))), torch.device("cpu"))
    batch = {"input_ids": torch.randint(5, 40, (2, 12)), "attention_mask": torch.ones(2, 12, dtype=torch.long)}
    mask = torch.ones(2, 12, dtype=torch.bool)
    seen = []
    hook = teacher.model.get_output_embeddings().register_forward_hook(lambda m, a, o: seen.append(a[0]))
    spec = TargetSpec(head, 32, top_k=4)
    out = teacher_forward(teacher, batch, mask, spec, None, torch.bfloat16, full_logits=True)
    hook.remove()
    head_module = teacher.model.get_output_embeddings()
    bias = head_module.bias.double() if head_module.bias is not None else None
    want = torch.nn.functional.linear(seen[0].double(), head_module.weight.double(), bias)
    torch.testing.assert_close(out.logits.double(), want[mask], rtol=1e-5, atol=1e-5)
    assert (out.logits.bfloat16().float() != out.logits).any()  # not bf16-rounded
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        plain = teacher.model(**batch).logits[mask].float()
    assert (plain.bfloat16().float() == plain).all()  # what the projection gives without the float32 hook
