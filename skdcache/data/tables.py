"""Read one split of a dataset, from split files (csv/json/jsonl/parquet) or the hub, as a `datasets.Dataset`."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from skdcache.errors import SkdError
from skdcache.models import looks_local

SPLIT_FILE_FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
SPLIT_NAMES = ("train", "validation", "test")


def _split_files(directory: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(directory.iterdir()):
        stem, suffix = path.name.split(".", 1)[0], "." + path.name.split(".", 1)[-1]
        if stem in SPLIT_NAMES and suffix in SPLIT_FILE_FORMATS:
            found[stem] = path
    return found


def available_splits(spec) -> list[str]:
    """Split names a local source offers (a hub dataset is asked only for the requested split)."""
    path = Path(spec.source)
    if path.is_dir():
        return list(_split_files(path))
    if path.is_file():
        return ["train"]
    return [spec.split]


def load_split(spec, split: str):
    """The rows of `split` of `spec` (a `DataSpec`); every error names the flag or file to fix."""
    import datasets

    datasets.disable_progress_bars()
    path = Path(spec.source)
    if path.is_dir():
        files = _split_files(path)
        if split not in files:
            raise SkdError(
                f"split {split!r} not found in {path} (found {sorted(files) or 'no split files'}); "
                f"name files train/validation/test.csv|json|jsonl|parquet or pass --split"
            )
        file = files[split]
        fmt = SPLIT_FILE_FORMATS["." + file.name.split(".", 1)[-1]]
        return _load_local(fmt, file, split)
    if path.is_file():
        suffix = "." + path.name.split(".", 1)[-1]
        if suffix not in SPLIT_FILE_FORMATS:
            raise SkdError(f"cannot read {path}: use a .csv, .json, .jsonl or .parquet file")
        if split != "train":
            raise SkdError(f"a single file has only the 'train' split; drop --split {split}")
        return _load_local(SPLIT_FILE_FORMATS[suffix], path, "train")
    near = difflib.get_close_matches(spec.source, os.listdir("."), n=1, cutoff=0.75) if "/" not in spec.source else []
    if looks_local(spec.source) or near:  # a path typo, not a hub name: no minute of hub retries
        hint = f" (did you mean {near[0]}?)" if near else ""
        raise SkdError(f"data path {spec.source} does not exist{hint}; check --data")
    try:
        return datasets.load_dataset(spec.source, spec.config_name, split=split)
    except Exception as exc:  # the hub raises many types; one line is what the user needs
        raise SkdError(
            f"cannot load hub dataset {spec.source!r} split {split!r} ({type(exc).__name__}); "
            f"offline? pass a local directory of split files to --data"
        ) from exc


def _load_local(fmt: str, file: Path, split: str):
    import datasets

    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its parser errors become our one-line errors
    counting = datasets.config.HF_UPDATE_DOWNLOAD_COUNTS  # a local file pings no hub counter (offline: a DNS stall)
    datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False
    try:
        return datasets.load_dataset(fmt, data_files={split: str(file)}, split=split)
    except ValueError as exc:
        if "corresponds to no data" in str(exc):  # a header-only file
            raise SkdError(f"split {split!r} ({file}) is empty; pick another --split or fill the file") from exc
        raise SkdError(f"cannot read {file} as {fmt}: {str(exc).splitlines()[0]}") from exc
    except Exception as exc:  # datasets wraps parser errors (e.g. DatasetGenerationError around UnicodeDecodeError)
        if isinstance(exc.__cause__ or exc.__context__, UnicodeDecodeError) or "codec can't decode" in str(exc):
            raise SkdError(f"{file} is not valid UTF-8; re-encode it (e.g. iconv -f latin1 -t utf-8)") from exc
        raise SkdError(f"cannot read {file} as {fmt} ({type(exc).__name__}); check the file format") from exc
    finally:
        datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = counting
