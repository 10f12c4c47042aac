"""What a cache manifest records about where its targets came from: package versions, the teacher's location
and the rows' description."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from skdcache.cache.manifest import DatasetInfo, Manifest, TeacherInfo
from skdcache.cache.spec import TargetSpec
from skdcache.data.rows import TextRows
from skdcache.teacher.load import LoadedTeacher, TeacherFiles
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


def new_manifest(
    teacher: LoadedTeacher, files: TeacherFiles, rows: TextRows, targets: TargetSpec, layout, tok_hash: str, key: str
) -> Manifest:
    """What the group will say about itself: teacher, tokenizer, rows, targets, layout, versions."""
    spec, config = files.spec, files.config
    return Manifest(
        format_version=layout.format_version,
        teacher=TeacherInfo(
            name=spec.name,
            source=spec.source,
            revision=spec.revision,
            head=files.head,
            weights_hash=teacher.weights_hash,
            num_parameters=teacher.num_parameters,
            num_labels=config.num_labels,
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            num_hidden_layers=config.num_hidden_layers,
            location=teacher_location(spec.source),
        ),
        tokenizer_hash=tok_hash,
        dataset=DatasetInfo.from_dict(dataset_record(rows)),
        targets=targets.to_dict(),
        layout=layout.to_dict(),
        versions=package_versions(),
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        cache_key=key,
    )
