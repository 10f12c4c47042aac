"""Evaluate a student on a labelled split with the task's metrics."""

from __future__ import annotations

import numpy as np
import torch

from skdcache.data.metrics import PRIMARY, NextTokenScores, task_metrics
from skdcache.distill.objective import label_loss
from skdcache.training.loader import StudentInputs, model_inputs, student_batch


@torch.no_grad()
def evaluate(model, inputs: StudentInputs, objective, device: torch.device, batch_size: int = 128) -> dict:
    """Metrics dict with a "primary" key naming the one to maximise (accuracy, pearson, token_accuracy)."""
    was_training = model.training
    model.eval()
    n = len(inputs.enc.ids)
    order = np.argsort([len(x) for x in inputs.enc.ids], kind="stable")  # length-sorted: little padding
    outputs, tokens = [], NextTokenScores()
    for start in range(0, n, batch_size):
        rows = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in student_batch(inputs, rows).items()}
        logits = model(**model_inputs(batch)).logits.float()
        if objective.head == "sequence":
            outputs.append((rows, logits.cpu().numpy()))
            continue
        tokens.add(logits, batch["token_labels"])
    if was_training:
        model.train()
    if objective.head != "sequence":
        return {"primary": "token_accuracy", **tokens.result()}
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
