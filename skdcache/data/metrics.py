"""Task metrics shared by teacher ranking at precompute and student evaluation in training."""

from __future__ import annotations

import numpy as np

PRIMARY = {"classification": "accuracy", "regression": "pearson"}


def _rank(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(len(x))
    # average ranks of ties so Spearman matches its textbook definition
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """accuracy, macro F1 and Matthews correlation (multi-class form) from [n, C] logits."""
    pred = logits.argmax(-1)
    n_cls = logits.shape[-1]
    cm = np.zeros((n_cls, n_cls), dtype=np.float64)
    np.add.at(cm, (labels, pred), 1)
    tp = np.diag(cm)
    precision = np.divide(tp, cm.sum(0), out=np.zeros(n_cls), where=cm.sum(0) > 0)
    recall = np.divide(tp, cm.sum(1), out=np.zeros(n_cls), where=cm.sum(1) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(n_cls), where=precision + recall > 0)
    t, p, c, s = cm.sum(1), cm.sum(0), tp.sum(), cm.sum()
    denom = np.sqrt((s * s - (p * p).sum()) * (s * s - (t * t).sum()))
    mcc = float((c * s - (t * p).sum()) / denom) if denom > 0 else 0.0
    return {"accuracy": float((pred == labels).mean()), "f1_macro": float(f1.mean()), "matthews": mcc}


def regression_metrics(pred: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    pred, labels = pred.reshape(-1).astype(np.float64), labels.reshape(-1).astype(np.float64)
    return {
        "pearson": _pearson(pred, labels),
        "spearman": _pearson(_rank(pred), _rank(labels)),
        "mse": float(((pred - labels) ** 2).mean()),
    }


def task_metrics(task: str, outputs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    if task == "regression":
        return regression_metrics(outputs, labels)
    return classification_metrics(outputs, labels)


class NextTokenScores:
    """Token accuracy, mean NLL and perplexity over batches of predictions: one definition for students (training
    evaluation) and causal teachers (their precompute metric)."""

    def __init__(self) -> None:
        self.correct, self.nll, self.count = 0, 0.0, 0

    def add(self, logits, labels) -> None:
        """logits [B, T, V] float32; labels [B, T], -100 where no token is scored."""
        import torch

        keep = labels != -100
        logp = torch.log_softmax(logits[keep], dim=-1)
        self.correct += int((logp.argmax(-1) == labels[keep]).sum())
        self.nll -= float(logp.gather(-1, labels[keep][:, None]).sum())
        self.count += int(keep.sum())

    def result(self) -> dict[str, float]:
        mean_nll = self.nll / max(self.count, 1)
        return {
            "token_accuracy": self.correct / max(self.count, 1),
            "nll": mean_nll,
            "perplexity": float(np.exp(min(mean_nll, 50))),
        }
