"""Paired differences between methods: a hierarchical paired bootstrap over seeds and test images.

For a reference method A and another method B of one protocol (and, for few-shot, one K), on the datasets both
ran and the seeds both ran on every one of them (runs of one seed share their few-shot images, so seeds pair):

1. Resample the seeds: ``S`` seed slots drawn with replacement from the ``S`` common seeds (one draw per
   replicate, shared by every dataset, since a seed is one split of every dataset).
2. Within each (dataset, test set, seed slot) resample the test images with replacement, stratified by class
   (base and novel are separate test sets, as are the targets of a transfer protocol), and score A and B on the
   same resampled images.
3. Compute the protocol's headline metric for A and B from the resampled accuracies, exactly as the tables do:
   the HM of the dataset averages of base and novel (base-to-novel), the average over the datasets of each run's
   target average (cross-dataset, domain generalisation), the dataset average of the accuracy (few-shot, per K).

The difference A - B on the data as they are is the point estimate; the 2.5 and 97.5 percentiles of the
replicates' differences are its 95% interval; the two-sided p-value is ``min(1, 2 (m + 1) / (R + 1))`` with m the
number of replicates on the far side of 0 (the smaller of #{d <= 0} and #{d >= 0}).

Only the joint outcome of an image (A right or wrong, B right or wrong) enters an accuracy, so each class's images
are put in a canonical order (by joint outcome) before resampling: reordering the test images changes nothing.
The random numbers come from streams keyed by (seed, purpose, dataset, test set, class), so the same inputs give
the same output, and :func:`bootstrap_loop` (the plain-loop restatement the tests compare against) can draw them
again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from prompt_ot.errors import UserError
from prompt_ot.utils.io import npz_arrays

DEFAULT_RESAMPLES = 2000
DEFAULT_SEED = 0
LEVEL = 0.95
PREDICTIONS_NAME = "predictions.npz"  # written by the evaluate stage beside metrics.json

HEADLINE = {
    "base2novel": "HM of the average base and novel accuracy",
    "cross_dataset": "average target accuracy",
    "domain_generalization": "average target accuracy",
    "few_shot": "average accuracy",
}


@dataclass(frozen=True)
class Scored:
    """One method's predictions on one test set of one run (equal ``labels`` for every method: the same images)."""

    predictions: np.ndarray
    labels: np.ndarray

    @property
    def correct(self) -> np.ndarray:
        return self.predictions == self.labels


# dataset -> seed -> test-set key -> predictions: one method's runs of one protocol (and one K)
MethodRuns = dict[str, dict[int, dict[str, Scored]]]


@dataclass
class Comparison:
    protocol: str
    shots: int | None  # the K of a few-shot comparison; None for the other protocols
    reference: str
    method: str
    reference_value: float  # the headline metric of each method on the data as they are
    method_value: float
    difference: float  # reference - method
    low: float
    high: float
    p_value: float
    seeds: list[int]
    datasets: list[str]
    resamples: int
    seed: int
    notes: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        """supported (interval above 0), contradicted (below 0) or inconclusive."""
        if self.low > 0:
            return "supported"
        if self.high < 0:
            return "contradicted"
        return "inconclusive"


def read_predictions(metrics_path: str | Path) -> dict[str, Scored]:
    """The test sets of one run, from the ``predictions.npz`` beside its metrics file."""
    path = Path(metrics_path).with_name(PREDICTIONS_NAME)
    if not path.is_file():
        raise UserError(
            f"{path} is missing: the paired statistics need each run's predictions; rerun the evaluate stage of "
            f"{Path(metrics_path).parent} (delete its metrics.json and rerun the pipeline)"
        )
    try:
        arrays = npz_arrays(path)
    except ValueError as err:  # a truncated or foreign file
        raise UserError(f"{path} cannot be read ({err}); delete it with its metrics.json and rerun evaluate") from err
    # test sets are stored as "<set>/predictions" and "<set>/labels"; other entries (the prompts' sha256) are not sets
    keys = sorted({name.rsplit("/", 1)[0] for name in arrays if name.endswith(("/predictions", "/labels"))})
    sets = {}
    for key in keys:
        predictions, labels = arrays.get(f"{key}/predictions"), arrays.get(f"{key}/labels")
        if predictions is None or labels is None or predictions.shape != labels.shape:
            raise UserError(f"{path}: test set {key!r} lacks predictions or labels of one length; rerun evaluate")
        sets[key] = Scored(np.asarray(predictions), np.asarray(labels))
    return sets


def scored_keys(protocol: str, dataset: str, available) -> list[str]:
    """The test sets of a run that its headline metric averages."""
    if protocol == "base2novel":
        return ["base", "novel"]
    if protocol == "few_shot":
        return ["all"]
    return sorted(k for k in available if k != dataset)  # a transfer protocol's targets, not the source


def headline(protocol: str, accuracy: dict[str, dict[str, np.ndarray]]):
    """The protocol's headline metric from accuracy[dataset][key] (seed-averaged; numbers or arrays)."""
    datasets = sorted(accuracy)
    if protocol == "base2novel":
        base = sum(accuracy[d]["base"] for d in datasets) / len(datasets)
        novel = sum(accuracy[d]["novel"] for d in datasets) / len(datasets)
        total = base + novel
        return 2 * base * novel / (total + (total == 0))
    per_dataset = [sum(accuracy[d].values()) / len(accuracy[d]) for d in datasets]
    return sum(per_dataset) / len(per_dataset)


@dataclass
class _Pair:
    """The paired data of one comparison: per (dataset, key, class) the images' joint outcomes per seed."""

    protocol: str
    datasets: list[str]
    seeds: list[int]
    keys: dict[str, list[str]]  # dataset -> test sets
    # (dataset, key) -> list over classes of (n images, {seed: (A right, B right) in canonical order})
    classes: dict[tuple[str, str], list[tuple[int, dict[int, tuple[np.ndarray, np.ndarray]]]]]
    sizes: dict[tuple[str, str], int]  # images per test set


def pair(protocol: str, reference: MethodRuns, other: MethodRuns, names=("reference", "method")) -> _Pair:
    """Line up two methods' runs: common datasets, seeds common to both on all of them, equal test images."""
    datasets = sorted(set(reference) & set(other))
    if not datasets:
        raise UserError(f"{names[0]} and {names[1]} have no {protocol} dataset in common")
    seeds = sorted(set.intersection(*(set(reference[d]) & set(other[d]) for d in datasets)))
    if not seeds:
        raise UserError(f"{names[0]} and {names[1]} have no seed in common on every {protocol} dataset")
    keys, classes, sizes = {}, {}, {}
    for d in datasets:
        first = reference[d][seeds[0]]
        keys[d] = scored_keys(protocol, d, set(first) & set(other[d][seeds[0]]))
        for key in keys[d]:
            labels = first[key].labels
            for s in seeds:
                for runs, name in ((reference, names[0]), (other, names[1])):
                    if key not in runs[d][s] or not np.array_equal(runs[d][s][key].labels, labels):
                        raise UserError(
                            f"{name} seed {s} on {d} ({key}) was not scored on the same test images as "
                            f"{names[0]} seed {seeds[0]}; rerun its evaluate stage"
                        )
            per_class = []
            for c in np.unique(labels):
                members = np.flatnonzero(labels == c)
                outcomes = {}
                for s in seeds:
                    a = reference[d][s][key].correct[members]
                    b = other[d][s][key].correct[members]
                    order = np.argsort(-(2 * a.astype(np.int8) + b), kind="stable")  # both right first
                    outcomes[s] = (a[order], b[order])
                per_class.append((len(members), outcomes))
            classes[(d, key)] = per_class
            sizes[(d, key)] = len(labels)
    return _Pair(protocol, datasets, seeds, keys, classes, sizes)


def _seed_draws(data: _Pair, resamples: int, seed: int) -> np.ndarray:
    """(R, S) indices into ``data.seeds``: each replicate's seed slots."""
    size = len(data.seeds)
    return np.random.default_rng([seed, 0]).integers(0, size, size=(resamples, size))


def _image_draws(data: _Pair, d: str, key: str, c: int, n: int, resamples: int, seed: int) -> np.ndarray:
    """(R, S, n) indices into one class's images: the resample of every (replicate, seed slot)."""
    stream = [seed, 1, data.datasets.index(d), data.keys[d].index(key), c]
    return np.random.default_rng(stream).integers(0, n, size=(resamples, len(data.seeds), n))


def _observed(data: _Pair) -> tuple[float, float]:
    accuracy = {m: {d: {} for d in data.datasets} for m in (0, 1)}
    for (d, key), per_class in data.classes.items():
        for m in (0, 1):
            right = [sum(int(o[s][m].sum()) for _, o in per_class) for s in data.seeds]
            accuracy[m][d][key] = 100.0 * sum(right) / (len(data.seeds) * data.sizes[(d, key)])
    return headline(data.protocol, accuracy[0]), headline(data.protocol, accuracy[1])


def _summary(observed: tuple[float, float], differences: np.ndarray) -> tuple[float, float, float, float]:
    low, high = np.quantile(differences, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    far = min(int((differences <= 0).sum()), int((differences >= 0).sum()))
    p_value = min(1.0, 2 * (far + 1) / (len(differences) + 1))
    return observed[0] - observed[1], float(low), float(high), p_value


def bootstrap(data: _Pair, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED):
    """(difference, low, high, p-value, (reference value, method value)) of the paired data."""
    check_settings(resamples, seed)
    seed_slots = _seed_draws(data, resamples, seed)  # (R, S)
    accuracy = {m: {d: {} for d in data.datasets} for m in (0, 1)}
    for (d, key), per_class in data.classes.items():
        right = np.zeros((2, resamples, len(data.seeds)))
        for c, (n, outcomes) in enumerate(per_class):
            draws = _image_draws(data, d, key, c, n, resamples, seed)
            for m in (0, 1):
                # counts[s, r, j]: seed s's right answers among slot j's draw in replicate r; keep the drawn seed's
                counts = np.stack([_rights(outcomes[s][m], draws) for s in data.seeds])
                right[m] += np.take_along_axis(counts, seed_slots[None], axis=0)[0]
        for m in (0, 1):
            accuracy[m][d][key] = (100.0 * right[m] / data.sizes[(d, key)]).mean(axis=1)  # (R,) over seed slots
    differences = headline(data.protocol, accuracy[0]) - headline(data.protocol, accuracy[1])
    observed = _observed(data)
    return _summary(observed, differences), observed


def _rights(correct: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """#right among the drawn images, (R, S): ``correct`` (n,) indexed by ``draws`` (R, S, n), summed."""
    if correct.all() or not correct.any():
        return np.full(draws.shape[:2], draws.shape[2] if correct.all() else 0)
    return correct[draws].sum(axis=-1)


def bootstrap_loop(data: _Pair, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED):
    """:func:`bootstrap` restated as plain loops over replicates, seed slots, test sets, classes and draws, from the
    same random numbers (the tests hold the two equal)."""
    seed_slots = _seed_draws(data, resamples, seed)
    draws = {
        (d, key, c): _image_draws(data, d, key, c, n, resamples, seed)
        for (d, key), per_class in data.classes.items()
        for c, (n, _) in enumerate(per_class)
    }
    differences = []
    for r in range(resamples):
        values = []
        for m in (0, 1):
            accuracy = {d: {} for d in data.datasets}
            for (d, key), per_class in data.classes.items():
                total = 0.0
                for j in range(len(data.seeds)):
                    s = data.seeds[seed_slots[r, j]]
                    right = 0
                    for c, (_, outcomes) in enumerate(per_class):
                        for i in draws[(d, key, c)][r, j]:
                            right += int(outcomes[s][m][i])
                    total += 100.0 * right / data.sizes[(d, key)]
                accuracy[d][key] = total / len(data.seeds)
            values.append(headline(data.protocol, accuracy))
        differences.append(values[0] - values[1])
    observed = _observed(data)
    return _summary(observed, np.array(differences)), observed


def check_settings(resamples, seed) -> None:
    if not isinstance(resamples, int) or isinstance(resamples, bool) or resamples < 1:
        raise UserError(f"bootstrap resamples must be a positive whole number, got {resamples!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise UserError(f"bootstrap seed must be a whole number >= 0, got {seed!r}")


def compare(
    protocol: str,
    reference: tuple[str, MethodRuns],
    other: tuple[str, MethodRuns],
    shots: int | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> Comparison:
    data = pair(protocol, reference[1], other[1], names=(reference[0], other[0]))
    (difference, low, high, p_value), (a, b) = bootstrap(data, resamples, seed)
    notes = []
    for name, runs in (reference, other):
        left = sorted(set(runs) - set(data.datasets))
        if left:
            notes.append(f"{name}'s {', '.join(left)} left out (not run by both)")
    return Comparison(
        protocol,
        shots,
        reference[0],
        other[0],
        a,
        b,
        difference,
        low,
        high,
        p_value,
        data.seeds,
        data.datasets,
        resamples,
        seed,
        notes,
    )


def p_text(p_value: float) -> str:
    return "1" if p_value >= 1 else (f"{p_value:.3f}" if p_value >= 0.001 else f"{p_value:.1e}")
