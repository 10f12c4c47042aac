"""A teacher's metric on the eval split, recorded in its cache's manifest: teacher-rank sampling ranks by it.

Classifiers and regressors are scored on the labels; causal LMs by next-token accuracy on the positions a
student is scored on (every next token, or the assistant tokens of chat rows), as `skdcache train` scores
students. Only the teacher and the rows are needed: nothing of the training side.
"""

from __future__ import annotations

import numpy as np
import torch

from skdcache.data.metrics import PRIMARY, NextTokenScores, task_metrics
from skdcache.data.rows import TextRows, pad_batch, tokenize
from skdcache.device import autocast_dtype
from skdcache.teacher.blocks import length_batches
from skdcache.teacher.load import LoadedTeacher
from skdcache.teacher.reduce import teacher_batch


@torch.inference_mode()
def evaluate_teacher(
    teacher: LoadedTeacher, rows: TextRows, max_length: int, batch_size: int, device, perm
) -> dict | None:
    """The manifest's `metric` record, or None when the split cannot score this teacher (no labels, MLM)."""
    if teacher.head == "causal":
        values = _next_token_scores(teacher, rows, max_length, batch_size, device)
        name = "token_accuracy"
    elif teacher.head == "sequence" and rows.labels is not None:
        values = task_metrics(
            rows.task, _sequence_outputs(teacher, rows, max_length, batch_size, device, perm), rows.labels
        )
        name = PRIMARY[rows.task]
    else:
        return None
    return {
        "split": rows.spec.split,
        "name": name,
        "value": values[name],
        "all": values,
        "n_rows": len(rows),
        "dataset_fingerprint": rows.fingerprint,
    }


def _sequence_outputs(teacher: LoadedTeacher, rows: TextRows, max_length: int, batch_size: int, device, perm):
    """The teacher's outputs [n_rows, C] float32, columns in the dataset's label order."""
    enc = tokenize(teacher.tokenizer, rows, max_length)
    outputs = np.zeros((len(rows), teacher.config.num_labels), dtype=np.float32)
    amp = autocast_dtype(device)
    for batch_rows in length_batches(enc.lengths, range(len(rows)), batch_size):
        batch, _ = teacher_batch(teacher, enc, batch_rows, None, teacher.head, device)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = teacher.model(**batch).logits.float()
        outputs[batch_rows] = (logits[:, perm] if perm is not None else logits).cpu().numpy()
    return outputs


def _next_token_scores(teacher: LoadedTeacher, rows: TextRows, max_length: int, batch_size: int, device) -> dict:
    """Next-token accuracy, mean NLL and perplexity at the scored positions, in float32 (no autocast)."""
    enc = tokenize(teacher.tokenizer, rows, max_length)
    order = np.argsort([len(x) for x in enc.ids], kind="stable")  # length-sorted: little padding
    tokens = NextTokenScores()
    for start in range(0, len(enc.ids), batch_size):
        batch_rows = order[start : start + batch_size]
        ids = [list(enc.ids[r]) for r in batch_rows]
        labels = torch.full((len(ids), max(len(x) for x in ids)), -100, dtype=torch.long)  # [B, T]
        for i, r in enumerate(batch_rows):
            scored = np.flatnonzero(enc.assistant[r][1:]) if enc.assistant is not None else np.arange(len(ids[i]))
            scored = scored[scored < len(ids[i]) - 1]  # position t predicts token t + 1
            labels[i, scored] = torch.tensor(ids[i], dtype=torch.long)[scored + 1]
        types = [enc.type_ids[r] for r in batch_rows] if enc.type_ids is not None else None  # as the cache saw them
        batch = {k: v.to(device) for k, v in pad_batch(ids, types, teacher.tokenizer.pad_token_id).items()}
        tokens.add(teacher.model(**batch).logits.float(), labels.to(device))
    return tokens.result()
