"""Per-class accuracy, balanced accuracy and macro-F1 of an evaluated subset, against scikit-learn's."""

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, f1_score, recall_score

from prompt_ot.evaluate import class_metrics

NAMES = ["cat", "dog", "bird", "fish", "frog"]


@pytest.mark.parametrize("seed", range(6))
def test_class_metrics_equal_scikit_learns(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, size=200)
    predictions = np.where(rng.random(200) < 0.6, labels, rng.integers(0, 5, size=200))
    if seed % 2:  # a class never predicted, and one without test images
        predictions[predictions == 3] = 0
        keep = labels != 4
        labels, predictions = labels[keep], predictions[keep]
    got = class_metrics(torch.from_numpy(predictions), torch.from_numpy(labels), NAMES)
    present = sorted(set(labels.tolist()))
    assert got["balanced_accuracy"] == pytest.approx(100 * balanced_accuracy_score(labels, predictions), abs=1e-12)
    expected_f1 = f1_score(labels, predictions, labels=range(5), average="macro", zero_division=0)
    assert got["macro_f1"] == pytest.approx(100 * expected_f1, abs=1e-12)
    recall = recall_score(labels, predictions, labels=present, average=None, zero_division=0)
    assert got["per_class_accuracy"] == pytest.approx({NAMES[c]: 100 * r for c, r in zip(present, recall)})
    assert list(got["per_class_accuracy"]) == [NAMES[c] for c in present]


def test_all_right_gives_one_hundred_everywhere():
    labels = torch.tensor([0, 1, 2, 2, 1])
    got = class_metrics(labels, labels, ["a", "b", "c"])
    assert got == {
        "per_class_accuracy": {"a": 100.0, "b": 100.0, "c": 100.0},
        "balanced_accuracy": 100.0,
        "macro_f1": 100.0,
    }
