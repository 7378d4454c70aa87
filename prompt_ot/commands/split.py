"""`python -m prompt_ot split`: write (or reuse) the few-shot manifest of one dataset, subset, shot count and seed."""

from __future__ import annotations

import argparse

from prompt_ot.utils import args as check


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", type=check.dataset_name, help="registry name of the dataset, e.g. oxford_pets")
    parser.add_argument(
        "--root", default="data", type=check.dir_path, help="data root that holds the dataset's folder (default: data)"
    )
    parser.add_argument(
        "--subset",
        default="all",
        type=check.subset_name,
        help="class subset: all, base or novel (base-to-novel protocol); default all",
    )
    parser.add_argument("--shots", type=check.positive_int, default=16, help="training images per class (default 16)")
    parser.add_argument("--seed", type=check.non_negative_int, default=1, help="sampling seed (default 1)")
    parser.add_argument(
        "--sampler",
        default="dassl",
        choices=["dassl", "per_class"],
        help="dassl: the released code's few-shot images (default); per_class: one generator per "
        "class, independent of the split file's order (see prompt_ot/data/fewshot.py)",
    )
    parser.add_argument("--out", required=True, type=check.out_file, help="manifest path to write (JSON)")
    parser.add_argument(
        "--params",
        default=None,
        metavar="FILE",
        help="the params.yaml that declares the dataset (custom_datasets) or overrides its class names",
    )


def run(args: argparse.Namespace) -> int:
    from collections import Counter

    from prompt_ot.config import load_params
    from prompt_ot.data.fewshot import ensure_manifest
    from prompt_ot.data.registry import dataset_spec

    if args.params:
        load_params(args.params)
    spec = dataset_spec(args.dataset)
    split, sha = spec.load_split_and_sha256(args.root)
    manifest, created = ensure_manifest(
        args.out, split, spec.image_root(args.root), spec.name, args.subset, args.shots, args.seed, args.sampler, sha
    )
    verb = "wrote" if created else "reused"
    print(
        f"{verb} {args.out}: {spec.name} {args.subset}, {len(manifest.classnames)} classes, "
        f"{len(manifest.train)} training and {len(manifest.val)} validation images "
        f"(shots {args.shots}, seed {args.seed}, sampler {args.sampler}; split sha256 {sha[:12]})"
    )
    per_class = Counter(entry.label for entry in manifest.train)
    short = [f"{name} ({per_class[i]})" for i, name in enumerate(manifest.classnames) if per_class[i] < args.shots]
    if short:
        print(
            f"warning: {len(short)} class(es) have fewer training images than {args.shots} shots: "
            f"{', '.join(short[:10])}{' ...' if len(short) > 10 else ''}; like Dassl's sampler (repeat=False), the "
            "manifest takes all of their images, so these classes train on fewer shots"
        )
    return 0
