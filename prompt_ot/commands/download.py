"""`python -m prompt_ot download <dataset>... --root DIR`: fetch, verify, unpack and check datasets.

Each dataset lands in ``DIR/<folder>`` (CoOp's folder names). A dataset already marked complete is
skipped; ``--check`` only validates a folder that was put in place by hand (ImageNet, Stanford
Cars) or earlier, and marks it complete when it passes. ``--list`` shows every recipe and its state.
"""

from __future__ import annotations

import argparse

from prompt_ot.utils import args as check


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("datasets", nargs="*", metavar="dataset",
                        help="registry names (see --list); 'all' means the 15 benchmark datasets")
    parser.add_argument("--root", default="data", type=check.dir_path,
                        help="data root; dataset X goes to ROOT/<X's folder> (default: data)")
    parser.add_argument("--check", action="store_true",
                        help="fetch nothing: validate the folder (split readable, listed images present) and mark it complete")
    parser.add_argument("--sample", type=check.positive_int, default=None, metavar="N",
                        help="with --check, check N random listed images instead of all of them")
    parser.add_argument("--force", action="store_true", help="fetch again even if the dataset is marked complete")
    parser.add_argument("--keep-archives", action="store_true", help="keep downloaded archives after unpacking")
    parser.add_argument("--no-verify", action="store_true",
                        help="accept files whose sha256 differs from the pinned one (the computed sha256 is still recorded)")
    parser.add_argument("--timeout", type=check.positive_float, default=60.0,
                        help="seconds without data before an attempt fails")
    parser.add_argument("--retries", type=check.positive_int, default=4, help="attempts per URL for transient failures")
    parser.add_argument("--list", action="store_true", help="list the datasets, their folders and whether they are complete")
    parser.add_argument("--stamp", default=None, type=check.out_file, metavar="FILE",
                        help="after success, write a small JSON stamp here (the pipeline's output for this stage)")


def _print_list(root: str) -> None:
    from prompt_ot.data.download import dataset_is_complete
    from prompt_ot.data.registry import dataset_names, get_recipe

    for name in dataset_names():
        recipe = get_recipe(name)
        how = "local" if recipe.prepare_fn else "manual" if recipe.manual_steps and not recipe.sources else (
            "auto+manual" if recipe.manual_steps else "auto")
        state = "complete" if dataset_is_complete(recipe, root) else "-"
        print(f"{name:<16} {recipe.kind:<12} {recipe.folder:<22} {how:<12} {state}")


def run(args: argparse.Namespace) -> int:
    from prompt_ot.data.download import FetchSettings, check_dataset, download_dataset, mark_complete
    from prompt_ot.data.registry import dataset_names, get_recipe
    from prompt_ot.errors import UserError

    if args.list:
        _print_list(args.root)
        return 0
    if not args.datasets:
        raise UserError(f"name at least one dataset (or 'all'); known datasets: {', '.join(dataset_names())}")
    names = [n for arg in args.datasets for n in (
        dataset_names("benchmark") + dataset_names("target_only") if arg == "all" else [arg])]
    recipes = [get_recipe(name) for name in names]  # every name checked before anything is fetched
    settings = FetchSettings(timeout=args.timeout, retries=args.retries)
    failures: list[str] = []
    for recipe in recipes:
        try:
            if args.check:
                report = check_dataset(recipe, args.root, sample=args.sample)
                for line in report.lines():
                    print(line)
                for relpath in report.missing[:20]:
                    print(f"  missing: {recipe.image_root(args.root) / relpath}")
                if not report.ok:
                    raise UserError(f"{recipe.name} is not complete: {report.problems[0]}")
                mark_complete(recipe, args.root, report)
                print(f"{recipe.name}: complete")
            else:
                download_dataset(recipe, args.root, force=args.force, verify=not args.no_verify,
                                 keep_archives=args.keep_archives, settings=settings)
        except UserError as err:
            if len(recipes) == 1:
                raise
            print(f"error: {err}")
            failures.append(recipe.name)
    if failures:
        raise UserError(f"{len(failures)} of {len(recipes)} datasets are not complete: {', '.join(failures)} "
                        f"(see the messages above)")
    if args.stamp:
        _write_stamp(args.stamp, recipes, args.root)
    return 0


def _write_stamp(path: str, recipes, root: str) -> None:
    """The pipeline's record that these datasets are complete; written only after every check passed."""
    import json

    from prompt_ot.data.download import dataset_is_complete
    from prompt_ot.errors import UserError
    from prompt_ot.utils.io import atomic_write_text

    for recipe in recipes:
        if not dataset_is_complete(recipe, root):
            raise UserError(f"{recipe.name} is not marked complete under {root}; run 'python -m prompt_ot download "
                            f"{recipe.name} --root {root} --check' after providing its files")
    payload = {"datasets": [r.name for r in recipes], "folders": [r.folder for r in recipes], "complete": True}
    atomic_write_text(path, json.dumps(payload, indent=1) + "\n")
