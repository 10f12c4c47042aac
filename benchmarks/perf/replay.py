"""The replay teacher of perf/capture.py: a model that returns pre-generated outputs, so a precompute run measures
the pipeline's own work and next to nothing of the forward.

`replayed` swaps precompute's teacher loader for one that builds a `ReplayModel` from the teacher's config
(outputs of the config's shapes), and `make_teacher_dir` writes a tiny real model directory whose config carries
the replayed shapes, for the fingerprints, the tokenizer and the head detection.
"""

from __future__ import annotations

import importlib
import json
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import torch

from skdcache.models import detect_head, load_config, load_tokenizer, resolve_model_dir
from skdcache.teacher.load import LoadedTeacher, TeacherSpec

precompute_module = importlib.import_module("skdcache.precompute")  # the package exports a function of that name


class ReplayModel(torch.nn.Module):
    """Returns pre-generated outputs, sliced to the batch's shape as views: a forward that costs ~nothing.

    Positions of a batch map onto a bank of distinct vectors ([B*T, V] logits, [B*T, H] per hidden layer), so
    every row of a block sees different values (no repeats that would flatter compression).
    """

    def __init__(self, config, head: str, batch: int, length: int, device: torch.device):
        super().__init__()
        self.config, self.head = config, head
        self.anchor = torch.nn.Parameter(torch.zeros(1, device=device))
        g = torch.Generator(device="cpu").manual_seed(0)
        n, layers = batch * length, config.num_hidden_layers + 1
        self.hidden = [torch.randn(n, config.hidden_size, generator=g).to(device) for _ in range(layers)]
        if head == "sequence":
            self.logits = torch.randn(batch, config.num_labels, generator=g).to(device)
        else:  # a Zipf-like prior over the vocabulary plus noise: peaked, with low ids frequent
            prior = -1.1 * torch.log(torch.arange(1, config.vocab_size + 1, dtype=torch.float32))
            self.logits = (prior + 2.5 * torch.randn(n, config.vocab_size, generator=g)).to(device)

    def get_output_embeddings(self):
        return None

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, output_hidden_states=False):
        b, t = input_ids.shape
        hidden = tuple(h[: b * t].view(b, t, -1) for h in self.hidden) if output_hidden_states else None
        logits = self.logits[:b] if self.head == "sequence" else self.logits[: b * t].view(b, t, -1)
        return SimpleNamespace(logits=logits, hidden_states=hidden)


def make_teacher_dir(out: Path, head: str, shape: tuple[int, int, int]) -> Path:
    """A tiny real model dir (config, tokenizer, weights to hash) whose config has the replayed shapes."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from skdcache.demo import pretrained_encoder

    if (out / "config.json").exists():
        return out
    vocab, hidden, layers = shape
    tok = AutoTokenizer.from_pretrained(pretrained_encoder())
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    BertForSequenceClassification(config).save_pretrained(out)
    tok.save_pretrained(out)
    cfg = json.loads((out / "config.json").read_text())
    arch = {"sequence": "BertForSequenceClassification", "mlm": "BertForMaskedLM", "causal": "BertForCausalLM"}[head]
    cfg.update(
        architectures=[arch],
        hidden_size=hidden,
        num_hidden_layers=layers,
        vocab_size=len(tok) if head == "sequence" else vocab,
        num_labels=3,
        is_decoder=head == "causal",
    )
    (out / "config.json").write_text(json.dumps(cfg))
    return out


@contextmanager
def replayed(batch: int, length: int):
    """precompute_teacher gets a ReplayModel built from the teacher's config instead of its weights (built
    once per teacher, so generating the outputs is not timed again on every repeat)."""
    real = precompute_module.load_teacher
    built: dict[str, ReplayModel] = {}

    def load(spec: TeacherSpec, device, trust_remote_code=False, weights_hash=None, files=None) -> LoadedTeacher:
        model_dir = resolve_model_dir(spec.source, spec.revision)
        config = load_config(model_dir, spec.name, False)
        head = detect_head(config, spec.head)
        if str(model_dir) not in built:
            built[str(model_dir)] = ReplayModel(config, head, batch, length, device)
        model = built[str(model_dir)]
        return LoadedTeacher(spec, model_dir, model, load_tokenizer(model_dir, False), head, weights_hash or "")

    precompute_module.load_teacher = load
    try:
        yield
    finally:
        precompute_module.load_teacher = real
