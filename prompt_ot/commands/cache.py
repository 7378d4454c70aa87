"""`python -m prompt_ot cache test|train`: compute frozen-backbone features once (see ``prompt_ot.cache``).

    python -m prompt_ot cache test digits --root data --backbone tiny-vit --out cache/tiny-vit/digits/test
    python -m prompt_ot cache train --manifest m.json --root data --backbone tiny-vit --epochs 40 --seed 1 --out DIR

With ``--params``, what the grid's runs need is derived from params.yaml (``prompt_ot.config``): the test cache's
precision, and the train cache's epochs of views, precision and stored image size; explicit options win.
"""

from __future__ import annotations

import argparse

from prompt_ot.utils import args as check


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root", default="data", type=check.dir_path, help="data root that holds the dataset's folder (default: data)"
    )
    parser.add_argument(
        "--backbone",
        default=None,
        type=check.non_empty,
        help="open_clip model name, e.g. ViT-B-16-quickgelu or tiny-vit (default: the backbone of --params)",
    )
    parser.add_argument(
        "--pretrained",
        default=None,
        help="open_clip tag (e.g. openai) or a local checkpoint file; default: --params's for its backbone, else "
        "random weights",
    )
    check.backbone_key_option(parser)
    parser.add_argument(
        "--out", required=True, type=check.out_dir, help="cache folder to write (reused when up to date)"
    )
    parser.add_argument("--batch-size", type=int, default=256, help="images per frozen forward (default 256)")
    parser.add_argument(
        "--device", default="auto", type=check.device_name, help="auto, cpu, cuda or cuda:N (default auto)"
    )
    parser.add_argument(
        "--workers", type=check.non_negative_int, default=0, help="DataLoader worker processes (default 0)"
    )
    parser.add_argument(
        "--params",
        default=None,
        help="params.yaml whose grid decides what the cache holds (precision; for train also the "
        "epochs and the stored image size)",
    )
    parser.add_argument(
        "--precision",
        default=None,
        choices=["fp32", "bf16", "fp16"],
        help="precision of the frozen forward; match the runs that read it (default: from --params, else fp32)",
    )
    parser.add_argument("--skip-bad", action="store_true", help="leave out images that cannot be decoded")
    parser.add_argument(
        "--replace", action="store_true", help="overwrite a cache of another backbone, dataset or seed at --out"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sides = parser.add_subparsers(dest="side", required=True, metavar="test|train")
    test = sides.add_parser("test", help="test-image and class-text features of a dataset")
    test.add_argument("dataset", type=check.dataset_name, help="registry name of the dataset, e.g. oxford_pets")
    test.add_argument(
        "--templates",
        nargs="+",
        default=None,
        type=check.template,
        help="class-text templates with one {} (default: the dataset's and 'a photo of a {}.')",
    )
    _common(test)
    train = sides.add_parser("train", help="features of every training view of a few-shot manifest")
    train.add_argument(
        "--manifest", required=True, type=check.existing_file, help="few-shot manifest written by 'split'"
    )
    train.add_argument(
        "--epochs",
        type=check.non_negative_int,
        default=None,
        help="training epochs whose views are cached (default: from --params; 0 caches the store only)",
    )
    train.add_argument(
        "--seed", type=check.non_negative_int, required=True, help="augmentation seed of the training run"
    )
    train.add_argument(
        "--train-short-side",
        type=check.non_negative_int,
        default=None,
        metavar="PIXELS",
        help="cap on the stored shorter side of the training images; larger ones are resized, "
        "aspect kept (default: automatic, 915 for 224 px inputs, the smallest cap at which "
        "every random crop is still a downscale); 0 keeps every image as decoded",
    )
    _common(train)


def _from_params(args: argparse.Namespace) -> None:
    """Fill the options left unset from the grid of ``--params``; without it, the defaults (or a clear error)."""
    from prompt_ot.errors import UserError

    params = None
    if args.params:
        from prompt_ot.config import load_params, select_backbone

        params = select_backbone(load_params(args.params), args.backbone_key, args.params)
        if args.backbone is None:
            args.backbone, args.pretrained = params["backbone"]["name"], params["backbone"]["pretrained"]
    elif args.backbone_key is not None:
        raise UserError("--backbone-key names a backbone of --params; give --params too")
    if args.backbone is None:
        raise UserError("give --backbone (an open_clip model name) or --params params.yaml, whose backbone is used")
    if args.side == "test":
        if args.precision is None:
            from prompt_ot.config import test_cache_precision

            args.precision = test_cache_precision(params, args.dataset) if params else "fp32"
        return
    if params is None:
        if args.epochs is None:
            raise UserError("give --epochs (the training epochs whose views are cached) or --params params.yaml")
        args.precision = args.precision or "fp32"
        return
    from prompt_ot.config import view_cache_settings
    from prompt_ot.data.fewshot import read_manifest

    manifest = read_manifest(args.manifest)
    settings = view_cache_settings(params, manifest.dataset, manifest.subset, manifest.shots)
    args.epochs = settings["epochs"] if args.epochs is None else args.epochs
    args.precision = args.precision or settings["precision"]
    if args.train_short_side is None and params["cache"]["train_short_side"] != "auto":
        args.train_short_side = params["cache"]["train_short_side"]


def _check_options(args: argparse.Namespace) -> None:
    """What the option types cannot tell on their own, before anything is read or computed."""
    from prompt_ot.errors import UserError

    if args.batch_size < 1:  # named as the library names it too (cache.build_*_cache's batch_size)
        raise UserError(
            f"--batch-size must be a positive integer (batch_size: images per frozen forward), got {args.batch_size}"
        )
    check.check_device(args.device)
    if args.side == "train":  # the manifest's images are read from its dataset's folder under --root
        from prompt_ot.data.fewshot import read_manifest
        from prompt_ot.data.registry import dataset_spec

        dataset = read_manifest(args.manifest).dataset
        folder = dataset_spec(dataset).dataset_dir(args.root)
        if not folder.is_dir():
            raise UserError(
                f"dataset folder {folder} does not exist; run 'python -m prompt_ot download {dataset} "
                f"--root {args.root}' or point --root at the folder that holds the manifest's images"
            )


def run(args: argparse.Namespace) -> int:
    from prompt_ot.cache import build_test_cache, build_train_cache

    _check_options(args)
    _from_params(args)
    options = {
        "batch_size": args.batch_size,
        "device": args.device,
        "workers": args.workers,
        "precision": args.precision,
        "skip_bad": args.skip_bad,
        "replace": args.replace,
        "progress": True,
    }
    if args.side == "test":
        result = build_test_cache(
            args.dataset, args.root, args.backbone, args.pretrained, args.out, templates=args.templates, **options
        )
        unit = "test images"
    else:
        result = build_train_cache(
            args.manifest,
            args.root,
            args.backbone,
            args.pretrained,
            args.out,
            epochs=args.epochs,
            seed=args.seed,
            train_short_side=args.train_short_side,
            **options,
        )
        unit = f"training views ({args.epochs} epochs, {args.precision})"
    if not result.built:
        print(f"reused {result.path}: up to date")
        return 0
    seconds = sum(result.timings.values())
    feature_s = result.timings.get("image_features_s", result.timings.get("view_features_s", 0.0))
    rate = f", {result.computed / feature_s:.0f}/s" if feature_s > 0 else ""
    print(f"wrote {result.path}: {result.computed} {unit} ({result.reason}; {seconds:.1f}s{rate})")
    return 0
