"""Class subsets of a split for the base-to-novel protocol.

Classes are sorted by label; ``base`` is the first ceil(n/2) of them and ``novel`` the rest, each
relabelled from 0 so a model trained on base classes sees labels 0..|base|-1. Cross-dataset transfer
and domain generalisation use ``all`` (the split unchanged).
"""

from __future__ import annotations

import math

from prompt_ot.data.registry import Item, Split
from prompt_ot.errors import unknown_name

SUBSETS = ("all", "base", "novel")


def base_novel_labels(labels: list[int] | set[int]) -> tuple[list[int], list[int]]:
    """The original labels of the base classes and of the novel classes."""
    ordered = sorted(set(labels))
    n_base = math.ceil(len(ordered) / 2)
    return ordered[:n_base], ordered[n_base:]


def subsample_classes(split: Split, subset: str) -> Split:
    """The items of ``split`` whose class is in ``subset``, relabelled from 0 in label order."""
    if subset not in SUBSETS:
        raise unknown_name("subset", subset, SUBSETS)
    if subset == "all":
        return {key: list(items) for key, items in split.items()}
    all_labels = {it.label for items in split.values() for it in items}
    base, novel = base_novel_labels(all_labels)
    kept = base if subset == "base" else novel
    new_label = {old: new for new, old in enumerate(kept)}
    return {
        key: [Item(it.relpath, new_label[it.label], it.classname) for it in items if it.label in new_label]
        for key, items in split.items()
    }
