"""Evaluate a student on a labelled split with the task's metrics."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from skdcache.data.metrics import PRIMARY, task_metrics
from skdcache.data.rows import TextRows, tokenize
from skdcache.device import autocast_dtype
from skdcache.distill.objective import label_loss
from skdcache.teacher.blocks import length_batches
from skdcache.teacher.load import LoadedTeacher
from skdcache.teacher.reduce import teacher_batch
from skdcache.training.loader import StudentInputs, model_inputs, student_batch


@torch.no_grad()
def evaluate(model, inputs: StudentInputs, objective, device: torch.device, batch_size: int = 128) -> dict:
    """Metrics dict with a "primary" key naming the one to maximise (accuracy, pearson, token_accuracy)."""
    was_training = model.training
    model.eval()
    n = len(inputs.enc.ids)
    order = np.argsort([len(x) for x in inputs.enc.ids], kind="stable")  # length-sorted: little padding
    outputs, correct, nll, count = [], 0, 0.0, 0
    for start in range(0, n, batch_size):
        rows = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in student_batch(inputs, rows).items()}
        logits = model(**model_inputs(batch)).logits.float()
        if objective.head == "sequence":
            outputs.append((rows, logits.cpu().numpy()))
            continue
        labels = batch["token_labels"]
        keep = labels != -100
        logp = torch.log_softmax(logits[keep], dim=-1)
        correct += int((logp.argmax(-1) == labels[keep]).sum())
        nll -= float(logp.gather(-1, labels[keep][:, None]).sum())
        count += int(keep.sum())
    if was_training:
        model.train()
    if objective.head != "sequence":
        return {
            "primary": "token_accuracy",
            "token_accuracy": correct / max(count, 1),
            "nll": nll / max(count, 1),
            "perplexity": float(np.exp(min(nll / max(count, 1), 50))),
        }
    full = np.zeros((n, outputs[0][1].shape[1]), dtype=np.float32)
    for rows, values in outputs:
        full[rows] = values
    result = task_metrics(objective.task, full, inputs.labels)
    return {"primary": PRIMARY[objective.task], **result}


@torch.no_grad()
def heldout_loss(model, inputs: StudentInputs, rows: np.ndarray, objective, device: torch.device) -> float:
    """Labels-only loss on fixed rows: the reward signal of `learned` sampling (leaves the model training)."""
    model.eval()
    batch = {k: v.to(device) for k, v in student_batch(inputs, rows).items()}
    value = float(label_loss(objective, model(**model_inputs(batch)).logits, batch))
    model.train()
    return value


@torch.inference_mode()
def evaluate_teacher(
    teacher: LoadedTeacher, rows: TextRows, max_length: int, batch_size: int, device, perm
) -> dict | None:
    """The teacher's metric on the eval split: teacher-rank sampling ranks teachers by it. Classifiers and
    regressors are scored on the labels; causal LMs by next-token accuracy, as `skdcache train` scores students
    (on the assistant tokens of chat rows)."""
    if teacher.head == "causal":
        pad_id = teacher.tokenizer.pad_token_id if teacher.tokenizer.pad_token_id is not None else 0
        inputs = StudentInputs(tokenize(teacher.tokenizer, rows, max_length), None, "causal", pad_id)
        values = evaluate(teacher.model, inputs, SimpleNamespace(head="causal", task="lm"), device, batch_size)
        values.pop("primary")
        return {
            "split": rows.spec.split,
            "name": "token_accuracy",
            "value": values["token_accuracy"],
            "all": values,
            "n_rows": len(rows),
            "dataset_fingerprint": rows.fingerprint,
        }
    if teacher.head != "sequence" or rows.labels is None:
        return None
    enc = tokenize(teacher.tokenizer, rows, max_length)
    outputs = np.zeros((len(rows), teacher.config.num_labels), dtype=np.float32)
    for batch_rows in length_batches(enc.lengths, range(len(rows)), batch_size):
        batch, _ = teacher_batch(teacher, enc, batch_rows, None, teacher.head, device)
        with torch.autocast(device.type, dtype=autocast_dtype(device), enabled=autocast_dtype(device) is not None):
            logits = teacher.model(**batch).logits.float()
        outputs[batch_rows] = (logits[:, perm] if perm is not None else logits).cpu().numpy()
    values = task_metrics(rows.task, outputs, rows.labels)
    return {
        "split": rows.spec.split,
        "name": PRIMARY[rows.task],
        "value": values[PRIMARY[rows.task]],
        "all": values,
        "n_rows": len(rows),
        "dataset_fingerprint": rows.fingerprint,
    }
