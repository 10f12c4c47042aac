"""Content keys: canonical JSON of explicit specs, hashed. Nothing pickled, nothing implicit.

A teacher cache is keyed by what determines its bytes: the teacher's config and weights, its tokenizer's
behaviour, the target spec, the label order and the format version. The dataset fingerprint is the parent
directory, so the same teacher on the same rows is computed once whatever the experiment calls it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from skdcache.cache.spec import TargetSpec

# The format number inside cache keys: 1 for v1 and v2 caches alike (v2 only codes the same targets), so a
# cache written before v2 is still found at its key and read as it is.
KEY_FORMAT_VERSION = 1

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
# A probe string exercising normalisation (case, accents, punctuation, digits, unknown characters).
TOKENIZER_PROBE = "Hello, WORLD! Héllo naïve café 12,345.67 — emoji 🙂 tabs\tand\nnewlines [MASK] <s> @user #tag"


def canonical_hash(obj, digest_size: int = 16) -> str:
    payload = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.blake2b(payload.encode(), digest_size=digest_size).hexdigest()


def hash_files(paths: list[Path], digest_size: int = 16) -> str:
    """blake2b of file names and bytes, streamed (weights can be gigabytes)."""
    h = hashlib.blake2b(digest_size=digest_size)
    for path in sorted(paths):
        h.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


def model_weights_hash(model_dir: Path) -> str:
    """Hash of config.json and every weight file of a saved model directory."""
    files = [p for p in model_dir.iterdir() if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.name == "config.json")]
    return hash_files(files)


def tokenizer_hash(tokenizer) -> str:
    """Hash of what the tokenizer does, not how its files are formatted: vocab, specials, a probe encoding."""
    spec = {
        "class": type(tokenizer).__name__.removesuffix("Fast"),
        "vocab": sorted(tokenizer.get_vocab().items()),
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "probe": tokenizer(TOKENIZER_PROBE, "and a pair")["input_ids"],
        "padding_side": tokenizer.padding_side,
    }
    return canonical_hash(spec)


def cache_key(weights_hash: str, tok_hash: str, targets: TargetSpec, label_names: list[str] | None) -> str:
    return canonical_hash(
        {
            "format_version": KEY_FORMAT_VERSION,
            "weights": weights_hash,
            "tokenizer": tok_hash,
            "targets": targets.to_dict(),
            "label_names": label_names,
        }
    )
