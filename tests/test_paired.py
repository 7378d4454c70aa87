"""The hierarchical paired bootstrap (prompt_ot/report/paired.py) on generated predictions."""

import numpy as np
import pytest

from prompt_ot.errors import UserError
from prompt_ot.report.paired import (
    Scored,
    bootstrap,
    bootstrap_loop,
    compare,
    headline,
    pair,
)

PROTOCOL_KEYS = {
    "base2novel": lambda d: ["base", "novel"],
    "few_shot": lambda d: ["all"],
    "cross_dataset": lambda d: [d, "target_a", "target_b"],
}


def labels_of(key, classes=3, per_class=(4, 6, 5)):
    """A test set's labels, classes interleaved (so a class's images are not contiguous)."""
    labels = np.concatenate([np.full(n, c) for c, n in zip(range(classes), per_class)])
    return np.random.default_rng(len(key)).permutation(labels)


def runs(protocol, accuracy, seed, datasets=("d1", "d2"), seeds=(1, 2, 3)):
    """MethodRuns whose predictions are right with probability ``accuracy`` (wrong: the next class)."""
    rng = np.random.default_rng(seed)
    out = {}
    for d in datasets:
        out[d] = {}
        for s in seeds:
            out[d][s] = {}
            for key in PROTOCOL_KEYS[protocol](d):
                labels = labels_of(d + key)
                right = rng.random(labels.size) < accuracy
                out[d][s][key] = Scored(np.where(right, labels, (labels + 1) % 3), labels)
    return out


@pytest.mark.parametrize("protocol", ["base2novel", "few_shot", "cross_dataset"])
def test_the_bootstrap_equals_its_plain_loop_restatement(protocol):
    data = pair(protocol, runs(protocol, 0.7, seed=1), runs(protocol, 0.5, seed=2))
    fast, loop = bootstrap(data, resamples=25, seed=4), bootstrap_loop(data, resamples=25, seed=4)
    assert fast[1] == loop[1]
    np.testing.assert_allclose(fast[0], loop[0], rtol=1e-12, atol=1e-12)


def observed_by_hand(protocol, reference):
    """The headline metric the tables report, from the accuracies as they are."""
    accuracy = {}
    for d, by_seed in reference.items():
        accuracy[d] = {}
        for key in PROTOCOL_KEYS[protocol](d):
            if protocol == "cross_dataset" and key == d:
                continue
            values = [100.0 * np.mean(t[key].predictions == t[key].labels) for t in by_seed.values()]
            accuracy[d][key] = np.mean(values)
    if protocol == "base2novel":
        base = np.mean([a["base"] for a in accuracy.values()])
        novel = np.mean([a["novel"] for a in accuracy.values()])
        return 2 * base * novel / (base + novel)
    return np.mean([np.mean(list(a.values())) for a in accuracy.values()])


@pytest.mark.parametrize("protocol", ["base2novel", "few_shot", "cross_dataset"])
def test_the_point_estimate_is_the_difference_of_the_tables_headline_metric(protocol):
    a, b = runs(protocol, 0.8, seed=5), runs(protocol, 0.4, seed=6)
    (difference, _, _, _), (value_a, value_b) = bootstrap(pair(protocol, a, b), resamples=10)
    assert value_a == pytest.approx(observed_by_hand(protocol, a), rel=1e-12)
    assert value_b == pytest.approx(observed_by_hand(protocol, b), rel=1e-12)
    assert difference == pytest.approx(value_a - value_b, rel=1e-12)


def test_identical_predictions_give_zero_with_interval_zero_zero():
    a = runs("base2novel", 0.6, seed=3)
    (difference, low, high, p_value), _ = bootstrap(pair("base2novel", a, a), resamples=200)
    assert (difference, low, high, p_value) == (0.0, 0.0, 0.0, 1.0)


def test_right_everywhere_against_wrong_everywhere_excludes_zero():
    right, wrong = runs("base2novel", 1.0, seed=1), runs("base2novel", 0.0, seed=2)
    (difference, low, high, p_value), _ = bootstrap(pair("base2novel", right, wrong), resamples=200)
    assert difference == pytest.approx(100.0)
    assert low > 0 and high > 0
    assert p_value == pytest.approx(2 / 201)
    (difference, low, high, _), _ = bootstrap(pair("base2novel", wrong, right), resamples=200)
    assert high < 0


def permuted(method_runs, seed):
    """The same runs with every test set's images in another order (the same order for every method and seed)."""
    out = {}
    for d, by_seed in method_runs.items():
        out[d] = {}
        for s, sets in by_seed.items():
            out[d][s] = {}
            for key, t in sets.items():
                order = np.random.default_rng([seed, len(d + key)]).permutation(t.labels.size)
                out[d][s][key] = Scored(t.predictions[order], t.labels[order])
    return out


def test_reordering_the_test_images_changes_nothing():
    a, b = runs("base2novel", 0.7, seed=8), runs("base2novel", 0.55, seed=9)
    before = bootstrap(pair("base2novel", a, b), resamples=300, seed=2)
    after = bootstrap(pair("base2novel", permuted(a, 1), permuted(b, 1)), resamples=300, seed=2)
    assert before == after


def test_the_same_inputs_give_the_same_output_and_the_seed_is_a_parameter():
    a, b = runs("few_shot", 0.7, seed=8), runs("few_shot", 0.6, seed=9)
    first = compare("few_shot", ("a", a), ("b", b), shots=4, resamples=300, seed=0)
    again = compare("few_shot", ("a", a), ("b", b), shots=4, resamples=300, seed=0)
    other = compare("few_shot", ("a", a), ("b", b), shots=4, resamples=300, seed=1)
    assert first == again
    assert (first.low, first.high) != (other.low, other.high)
    assert first.difference == other.difference


def test_only_common_seeds_and_datasets_are_paired_and_the_rest_is_named():
    a = runs("base2novel", 0.7, seed=1, datasets=("d1", "d2", "d3"))
    b = runs("base2novel", 0.5, seed=2, seeds=(2, 3))
    result = compare("base2novel", ("a", a), ("b", b), resamples=50)
    assert result.seeds == [2, 3] and result.datasets == ["d1", "d2"]
    assert result.notes == ["a's d3 left out (not run by both)"]


def test_runs_scored_on_other_images_are_refused():
    a, b = runs("few_shot", 0.7, seed=1), runs("few_shot", 0.5, seed=2)
    t = b["d1"][2]["all"]
    b["d1"][2]["all"] = Scored(t.predictions, np.roll(t.labels, 1))
    with pytest.raises(UserError, match="b seed 2 on d1 .all. was not scored on the same test images"):
        pair("few_shot", a, b, names=("a", "b"))


@pytest.mark.parametrize("resamples, seed", [(0, 0), (1.5, 0), (10, -1), (True, 0)])
def test_bad_settings_are_refused(resamples, seed):
    data = pair("few_shot", runs("few_shot", 0.7, seed=1), runs("few_shot", 0.5, seed=2))
    with pytest.raises(UserError, match="bootstrap"):
        bootstrap(data, resamples=resamples, seed=seed)


def test_headline_of_base2novel_is_zero_when_both_averages_are():
    assert headline("base2novel", {"d": {"base": 0.0, "novel": 0.0}}) == 0.0


def test_a_predictions_file_is_the_same_bytes_for_the_same_arrays_and_reads_back(tmp_path):
    from prompt_ot.report.paired import read_predictions
    from prompt_ot.utils.io import npz_bytes

    arrays = {"base/predictions": np.array([0, 2, 1]), "base/labels": np.array([0, 1, 1])}
    first = npz_bytes(arrays)
    assert npz_bytes({k: v.copy() for k, v in arrays.items()}) == first
    (tmp_path / "predictions.npz").write_bytes(first)
    sets = read_predictions(tmp_path / "metrics.json")
    assert list(sets) == ["base"] and sets["base"].correct.tolist() == [True, False, True]
    with np.load(tmp_path / "predictions.npz") as data:  # numpy's own reader
        assert sorted(data.files) == sorted(arrays) and np.array_equal(data["base/labels"], arrays["base/labels"])
