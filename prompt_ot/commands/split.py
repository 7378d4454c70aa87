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


def run(args: argparse.Namespace) -> int:
    from prompt_ot.data.fewshot import ensure_manifest
    from prompt_ot.data.registry import dataset_spec

    spec = dataset_spec(args.dataset)
    split = spec.load_split(args.root)
    manifest, created = ensure_manifest(
        args.out, split, spec.image_root(args.root), spec.name, args.subset, args.shots, args.seed, args.sampler
    )
    verb = "wrote" if created else "reused"
    print(
        f"{verb} {args.out}: {spec.name} {args.subset}, {len(manifest.classnames)} classes, "
        f"{len(manifest.train)} training and {len(manifest.val)} validation images "
        f"(shots {args.shots}, seed {args.seed}, sampler {args.sampler})"
    )
    return 0
