"""Teacher outputs reduced to cache targets: precision of the vocabulary projection under autocast."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
from conftest import make_model, spread

from skdcache.cache.spec import TargetSpec
from skdcache.teacher.load import TeacherSpec, load_teacher
from skdcache.teacher.reduce import teacher_forward


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


def test_student_vocabulary_projection_is_float32_under_autocast_and_its_kd_gradient_exact():
    """The student gets the teacher's treatment: under bf16 autocast its logits come from a float32
    projection of the bf16 body's states, so the KD gradient equals a float64 projection's to ~1e-6, where
    the bf16 projection is off by ~1e-3 (logits of ~10, V = 4096); without autocast the hook changes nothing."""
    from skdcache.distill.losses import topk_kd_loss
    from skdcache.teacher.reduce import float32_vocab_projection, topk_with_tail

    torch.manual_seed(0)
    V, H, n = 4096, 64, 64
    head = torch.nn.Linear(H, V, bias=False)
    with torch.no_grad():
        head.weight.mul_(10.0 / (head.weight.std() * H**0.5))  # logits of std ~1, max ~10, as a trained LM's
    model = torch.nn.Module()
    model.get_output_embeddings = lambda: head
    hidden = torch.randn(n, H).bfloat16().float()  # a bf16 body's states
    values, ids, tail = topk_with_tail(torch.randn(n, V) * 3, 16)

    def kd_grad(dtype_of_projection: str) -> torch.Tensor:
        head.zero_grad()
        if dtype_of_projection == "float64":
            logits = torch.nn.functional.linear(hidden.double(), head.weight.double())
            loss = topk_kd_loss(logits, ids, values.double(), tail.double(), 2.0)
            (g,) = torch.autograd.grad(loss, head.weight)
            return g.double()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = head(hidden)
        assert logits.dtype == (torch.float32 if dtype_of_projection == "float32" else torch.bfloat16)
        (g,) = torch.autograd.grad(topk_kd_loss(logits.float(), ids, values, tail, 2.0), head.weight)
        return g.double()

    exact = kd_grad("float64")
    plain = kd_grad("bfloat16")
    handle = float32_vocab_projection(model, "causal")
    assert handle is not None and float32_vocab_projection(model, "sequence") is None
    fixed = kd_grad("float32")
    assert float((plain - exact).norm() / exact.norm()) > 1e-3
    assert float((fixed - exact).norm() / exact.norm()) < 1e-5
    with torch.no_grad():
        assert torch.equal(head(hidden), torch.nn.functional.linear(hidden, head.weight))  # no autocast: as is
    handle.remove()


def test_train_registers_the_student_projection(monkeypatch, tmp_path: Path):
    """`skdcache train` under (forced) bf16 autocast on CPU: the student's logits reach the loss in float32."""
    from conftest import write_split

    train_module = importlib.import_module("skdcache.train")  # the package exports a function of that name
    from skdcache import DataSpec, TargetOptions, precompute
    from skdcache.training.config import TrainConfig

    data = tmp_path / "data"
    data.mkdir()
    write_split(data / "train.csv", 16, seed=1)
    teacher = spread(make_model(tmp_path / "t", "causal", layers=1, seed=1), 3.0)
    spec = DataSpec(str(data), label_column=None)
    precompute(spec, [TeacherSpec("t", str(teacher))], tmp_path / "cache", TargetOptions(max_length=16, progress=False))
    seen = []
    real = train_module.float32_vocab_projection

    def spy(model, head):
        handle = real(model, head)
        model.get_output_embeddings().register_forward_hook(lambda m, a, o: seen.append(o.dtype))
        return handle

    monkeypatch.setattr(train_module, "float32_vocab_projection", spy)
    monkeypatch.setattr(train_module, "autocast_dtype", lambda device: torch.bfloat16)
    cfg = TrainConfig(
        data=spec,
        student=str(make_model(tmp_path / "s", "causal", layers=1, seed=2)),
        output=str(tmp_path / "out"),
        cache=str(tmp_path / "cache"),
        max_steps=1,
        batch_size=8,
        max_length=16,
        device="cpu",
        eval_split=None,
        progress=False,
        num_workers=0,
    )
    train_module.train(cfg)
    assert seen and set(seen) == {torch.float32}


@pytest.mark.parametrize("targets", ["topk", "sampled", "hybrid"])
def test_chunked_reduction_equals_one_pass_over_all_positions(monkeypatch, targets: str):
    """The reduction walks the target positions a few MB at a time; chunk boundaries change no value: the
    targets equal one pass over every target position (ragged masks, chunks of 1, 3 and all positions)."""
    from skdcache.cache.reader import Targets
    from skdcache.teacher import reduce
    from skdcache.teacher.reduce import _reduce, position_uniforms, sample_targets, topk_with_tail

    torch.manual_seed(0)
    V = 50
    logits = torch.randn(3, 7, V) * 3
    mask = torch.rand(3, 7) > 0.4
    sampled = {"samples": 6, "sample_temperature": 2.0, "sample_seed": 0} if targets != "topk" else {}
    spec = TargetSpec("causal", 7, top_k=4, targets=targets, **sampled)
    uniforms = position_uniforms([0, 1, 2], mask.sum(1).tolist(), 6, seed=0) if spec.sampled else None
    if spec.sampled:
        want = sample_targets(logits[mask], spec, uniforms)
    else:
        want = dict(zip(("topk_logprobs", "topk_ids", "tail_logmass"), topk_with_tail(logits[mask], 4), strict=True))
    out = type("Out", (), {"logits": logits, "hidden_states": None})()
    real = reduce.target_chunks
    for elements in (1, 3 * V, 10**6):
        monkeypatch.setattr(reduce, "target_chunks", lambda lg, m, e=elements: real(lg, m, e))
        got = _reduce(out, "causal", {}, mask, spec, None, False, uniforms)
        assert isinstance(got, Targets)
        for name, values in want.items():
            assert torch.equal(getattr(got, name), values), (name, elements)
