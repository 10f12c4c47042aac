"""What a cache manifest records about where its targets came from: package versions, the teacher's location
and the rows' description."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from skdcache.data.rows import TextRows
from skdcache.version import __version__


def package_versions() -> dict[str, str]:
    import transformers
    import zarr

    return {
        "skdcache": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "zarr": zarr.__version__,
        "numpy": np.__version__,
    }


def teacher_location(source: str) -> str | None:
    """The absolute path of a local teacher directory (so online mode finds it from any directory), else None."""
    path = Path(source).expanduser()
    return str(path.resolve()) if path.is_dir() else None


def dataset_record(rows: TextRows) -> dict:
    s = rows.spec
    return {
        "fingerprint": rows.fingerprint,
        "n_rows": len(rows),
        "split": s.split,
        "source": s.source,
        "text_column": s.text_column,
        "text_pair_column": s.text_pair_column,
        "label_column": s.label_column,
        "label_names": rows.label_names,
        "task": rows.task,
        "limit": s.limit,
    } | (
        {
            "messages_column": s.messages_column,
            "chat_template": rows.chat_template,
            "messages_fingerprint": rows.messages_fingerprint,
            "end_of_turn": s.end_of_turn,
        }
        if rows.messages is not None
        else {}
    )
