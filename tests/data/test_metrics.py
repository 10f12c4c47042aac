"""Task metrics against plain float64 formulas written out here: accuracy, macro F1 and Matthews correlation from
counted predictions, Pearson, Spearman with averaged tied ranks, and MSE, on realistic inputs and edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from skdcache.data.metrics import PRIMARY, classification_metrics, regression_metrics, task_metrics


# ---- plain reference formulas (loops over Python floats, no shared code with the module) -------------------------
def ref_classification(pred: list[int], labels: list[int], n_cls: int) -> dict[str, float]:
    n = len(labels)
    accuracy = sum(p == y for p, y in zip(pred, labels, strict=True)) / n
    f1s = []
    for c in range(n_cls):
        tp = sum(p == c and y == c for p, y in zip(pred, labels, strict=True))
        fp = sum(p == c and y != c for p, y in zip(pred, labels, strict=True))
        fn = sum(p != c and y == c for p, y in zip(pred, labels, strict=True))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)  # = 2PR/(P+R); 0 where P or R is undefined
    # Matthews as the correlation of the one-hot label and prediction matrices (Gorodkin's R_K)
    x = [[float(y == c) for c in range(n_cls)] for y in labels]
    yy = [[float(p == c) for c in range(n_cls)] for p in pred]

    def cov(a, b):
        total = 0.0
        for c in range(n_cls):
            ma, mb = sum(r[c] for r in a) / n, sum(r[c] for r in b) / n
            total += sum((ra[c] - ma) * (rb[c] - mb) for ra, rb in zip(a, b, strict=True))
        return total

    denom = math.sqrt(cov(x, x) * cov(yy, yy))
    return {"accuracy": accuracy, "f1_macro": sum(f1s) / n_cls, "matthews": cov(x, yy) / denom if denom else 0.0}


def ref_pearson(a: list[float], b: list[float]) -> float:
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    num = sum((x - ma) * (y - mb) for x, y in zip(a, b, strict=True))
    den = math.sqrt(sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b))
    return num / den if den else 0.0


def ref_ranks(values: list[float]) -> list[float]:
    """1-based average ranks: a value's rank is the mean of the positions its ties take in sorted order."""
    ordered = sorted(values)
    return [sum(i + 1 for i, v in enumerate(ordered) if v == x) / ordered.count(x) for x in values]


# ---- classification --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("n", "n_cls", "seed"), [(600, 3, 0), (257, 5, 1), (400, 2, 2), (50, 4, 3)])
def test_classification_metrics_equal_the_plain_formulas(n: int, n_cls: int, seed: int):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_cls, n)
    logits = rng.normal(size=(n, n_cls)).astype(np.float32)
    logits[np.arange(n), labels] += rng.uniform(0, 2.5, n).astype(np.float32)  # a student that is partly right
    got = classification_metrics(logits, labels)
    want = ref_classification(logits.argmax(-1).tolist(), labels.tolist(), n_cls)
    assert got == pytest.approx(want, rel=1e-12, abs=1e-12)
    assert 0.4 < got["accuracy"] < 0.95 and got["matthews"] > 0.1  # realistic: neither chance nor perfect
    assert all(type(v) is float for v in got.values())  # JSON-ready


def test_binary_matthews_is_the_textbook_formula():
    labels = np.array([1] * 40 + [0] * 60)
    pred = np.array([1] * 30 + [0] * 10 + [1] * 15 + [0] * 45)
    tp, fn, fp, tn = 30, 10, 15, 45
    logits = np.eye(2)[pred]
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    got = classification_metrics(logits, labels)
    assert got["matthews"] == pytest.approx(mcc, rel=1e-12)
    f1_pos, f1_neg = 2 * tp / (2 * tp + fp + fn), 2 * tn / (2 * tn + fn + fp)
    assert got["f1_macro"] == pytest.approx((f1_pos + f1_neg) / 2, rel=1e-12)
    assert got["accuracy"] == pytest.approx(0.75)


def test_perfect_and_inverted_predictions():
    labels = np.array([0, 1, 2, 0, 1, 2, 2])
    perfect = classification_metrics(np.eye(3)[labels], labels)
    assert perfect == {"accuracy": 1.0, "f1_macro": 1.0, "matthews": pytest.approx(1.0)}
    binary = np.array([0, 1, 1, 0, 1])
    inverted = classification_metrics(np.eye(2)[1 - binary], binary)
    assert inverted["accuracy"] == 0.0 and inverted["matthews"] == pytest.approx(-1.0) and inverted["f1_macro"] == 0


def test_a_constant_prediction_has_zero_matthews():
    """One predicted class: the correlation is undefined (0 / 0) and reported as 0, as sklearn does."""
    labels = np.array([0, 1, 2, 1, 0, 1])
    logits = np.tile([0.1, 0.9, 0.0], (6, 1))
    got = classification_metrics(logits, labels)
    assert got["matthews"] == 0.0 and got["accuracy"] == pytest.approx(0.5)
    assert got["f1_macro"] == pytest.approx((2 * 3 / (2 * 3 + 3 + 0)) / 3)  # only class 1 has an F1


def test_one_class_in_labels_and_predictions():
    """Every row of one class, predicted right: accuracy 1, Matthews undefined -> 0, and macro F1 averages over
    every class of the logits (absent classes count 0, like sklearn with labels=range(C), zero_division=0)."""
    labels = np.zeros(9, dtype=np.int64)
    got = classification_metrics(np.tile([2.0, 1.0, 0.0], (9, 1)), labels)
    assert got == {"accuracy": 1.0, "f1_macro": pytest.approx(1 / 3), "matthews": 0.0}


def test_ties_predict_the_first_class():
    labels = np.array([0, 1, 2])
    got = classification_metrics(np.zeros((3, 3), dtype=np.float16), labels)  # every logit tied
    assert got["accuracy"] == pytest.approx(1 / 3)  # argmax takes the first maximum: class 0 everywhere
    got = classification_metrics(np.array([[0.0, 5.0, 5.0]] * 3), labels)
    assert got["accuracy"] == pytest.approx(1 / 3) and got == pytest.approx(ref_classification([1, 1, 1], [0, 1, 2], 3))


def test_a_single_row():
    got = classification_metrics(np.array([[0.2, 0.8]]), np.array([1]))
    assert got == {"accuracy": 1.0, "f1_macro": 0.5, "matthews": 0.0}


# ---- regression ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("n", "seed"), [(500, 0), (64, 1), (7, 2)])
def test_regression_metrics_equal_the_plain_formulas(n: int, seed: int):
    rng = np.random.default_rng(seed)
    labels = np.round(rng.uniform(0, 5, n), 1).astype(np.float32)  # STS-B-like scores, with many ties
    pred = (labels + rng.normal(0, 1.0, n)).astype(np.float32)
    pred[: n // 5] = np.round(pred[: n // 5])  # ties in the predictions too
    got = regression_metrics(pred[:, None], labels)  # a [n, 1] head output is flattened
    p, y = pred.astype(np.float64).tolist(), labels.astype(np.float64).tolist()
    assert got["pearson"] == pytest.approx(ref_pearson(p, y), rel=1e-10)
    assert got["spearman"] == pytest.approx(ref_pearson(ref_ranks(p), ref_ranks(y)), rel=1e-10)
    assert got["mse"] == pytest.approx(sum((a - b) ** 2 for a, b in zip(p, y, strict=True)) / n, rel=1e-12)
    assert all(type(v) is float for v in got.values())


def test_spearman_averages_tied_ranks():
    labels = np.array([1.0, 2.0, 2.0, 3.0, 4.0])
    pred = np.array([10.0, 20.0, 30.0, 30.0, 40.0])
    # ranks: labels 1, 2.5, 2.5, 4, 5; pred 1, 2, 3.5, 3.5, 5
    want = ref_pearson([1, 2.5, 2.5, 4, 5], [1, 2, 3.5, 3.5, 5])
    assert regression_metrics(pred, labels)["spearman"] == pytest.approx(want, rel=1e-12)
    assert want != pytest.approx(ref_pearson([1, 2, 3, 4, 5], [1, 2, 3, 4, 5]))  # ties do change it


def test_monotone_but_not_linear():
    x = np.linspace(0.1, 3, 50)
    got = regression_metrics(np.exp(3 * x), x)
    assert got["spearman"] == pytest.approx(1.0) and got["pearson"] < 0.9


def test_constant_outputs_have_zero_correlation():
    labels = np.array([0.5, 1.0, 3.0, 2.0])
    got = regression_metrics(np.full(4, 2.0, dtype=np.float16), labels)
    assert got["pearson"] == 0.0 and got["spearman"] == 0.0
    assert got["mse"] == pytest.approx(np.mean((2.0 - labels) ** 2))


def test_float16_outputs_are_computed_in_float64():
    """Sums of 20000 float16 values would lose digits; the metrics cast first."""
    rng = np.random.default_rng(0)
    labels = rng.uniform(0, 5, 20000).astype(np.float16)
    pred = (labels.astype(np.float64) + rng.normal(0, 0.5, 20000)).astype(np.float16)
    p, y = pred.astype(np.float64), labels.astype(np.float64)
    assert regression_metrics(pred, labels)["mse"] == pytest.approx(float(np.mean((p - y) ** 2)), rel=1e-12)


# ---- dispatch -----------------------------------------------------------------------------------------------------
def test_task_metrics_dispatch_and_primary_metrics():
    labels = np.array([0, 1, 1, 2])
    logits = np.eye(3)[[0, 1, 2, 2]]
    classification = task_metrics("classification", logits, labels)
    assert classification == classification_metrics(logits, labels)
    regression = task_metrics("regression", np.array([1.0, 2.0, 2.5]), np.array([1.0, 2.0, 3.0]))
    assert set(regression) == {"pearson", "spearman", "mse"}
    assert PRIMARY["classification"] in classification and PRIMARY["regression"] in regression
