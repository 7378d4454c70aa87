"""`python -m prompt_ot download <dataset>... --root DIR`: fetch, verify, unpack and check datasets.

Each dataset lands in ``DIR/<folder>`` (CoOp's folder names). A dataset already marked complete is
skipped; ``--check`` only validates a folder that was put in place by hand (ImageNet, Stanford
Cars) or earlier, and marks it complete when it passes. ``--from PATH`` lays out a copy obtained elsewhere (an
archive or a folder) instead of downloading it. ``--list`` shows every dataset and its state.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prompt_ot.utils import args as check


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "datasets",
        nargs="*",
        metavar="dataset",
        help="registry names (see --list); 'all' means the 15 benchmark datasets",
    )
    parser.add_argument(
        "--root",
        default="data",
        type=check.dir_path,
        help="data root; dataset X goes to ROOT/<X's folder> (default: data)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="fetch nothing: validate the folder (split readable, listed images present) and mark it complete",
    )
    parser.add_argument(
        "--sample",
        type=check.positive_int,
        default=None,
        metavar="N",
        help="with --check, check N random listed images instead of all of them",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="fetch nothing: compare the folder with the record of its files (size, sha256) written when it was "
        "completed, and with its split file; list missing, extra and changed files",
    )
    parser.add_argument(
        "--from",
        dest="from_path",
        default=None,
        metavar="PATH",
        help="download nothing but the split file: lay out a copy obtained elsewhere (e.g. SUN397 from OpenDataLab "
        "or Kaggle), an archive (zip, tar, tar.gz, ...) or a folder. An archive named like the recipe's (e.g. "
        "SUN397.tar.gz) must match its pinned sha256 (--no-verify accepts another); every copy is checked against "
        "the split file (listed images present, class count). The folder in PATH holding the split's listed "
        "images is found whatever its name or depth and becomes ROOT/<folder>/<image folder>; the split file "
        "comes from PATH, an earlier download or the recipe's URL. An archive is unpacked under ROOT; a folder's "
        "files are hard-linked into ROOT where the file system allows (same file system), else copied: PATH itself "
        "is never moved or changed. Nothing under ROOT changes unless the whole copy checks out. One dataset at a "
        "time",
    )
    parser.add_argument("--force", action="store_true", help="fetch again even if the dataset is marked complete")
    parser.add_argument("--keep-archives", action="store_true", help="keep downloaded archives after unpacking")
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="accept files whose sha256 differs from the pinned one (the computed sha256 is still recorded)",
    )
    parser.add_argument(
        "--timeout", type=check.positive_float, default=60.0, help="seconds without data before an attempt fails"
    )
    parser.add_argument("--retries", type=check.positive_int, default=4, help="attempts per URL for transient failures")
    parser.add_argument(
        "--list", action="store_true", help="list the datasets, their folders and whether they are complete"
    )
    parser.add_argument(
        "--stamp",
        default=None,
        type=check.out_file,
        metavar="FILE",
        help="after success, write a small JSON stamp here (the pipeline's output for this stage)",
    )
    parser.add_argument(
        "--params",
        default=None,
        metavar="FILE",
        help="the params.yaml that declares datasets (custom_datasets) or overrides their class names and templates",
    )


def _print_list(root: str) -> None:
    from prompt_ot.data.download import dataset_is_complete
    from prompt_ot.data.registry import dataset_names, dataset_spec

    names = dataset_names()
    width = max(map(len, names)) + 1
    for name in names:
        spec = dataset_spec(name)
        how = (
            "local"
            if spec.prepare_fn
            else "manual"
            if spec.manual_steps and not spec.sources
            else ("auto+manual" if spec.manual_steps else "auto")
        )
        state = "complete" if dataset_is_complete(spec, root) else "-"
        print(f"{name:<{width}} {spec.kind:<12} {spec.folder:<22} {how:<12} {state}")


def run(args: argparse.Namespace) -> int:
    from prompt_ot.data.download import FetchSettings, check_dataset, download_dataset, mark_complete, provide_dataset
    from prompt_ot.data.registry import PAPER_DATASETS, dataset_names, dataset_spec
    from prompt_ot.errors import UserError

    if args.params:
        from prompt_ot.config import load_params

        load_params(args.params)
    if args.list:
        _print_list(args.root)
        return 0
    if not args.datasets:
        raise UserError(f"name at least one dataset (or 'all'); known datasets: {', '.join(dataset_names())}")
    names = [n for arg in args.datasets for n in (PAPER_DATASETS if arg == "all" else [arg])]
    specs = [dataset_spec(name) for name in names]  # every name checked before anything is fetched
    if args.from_path is not None:
        if len(specs) != 1:
            raise UserError(f"--from lays out one dataset; name one, not {', '.join(names)}")
        clash = [option for option, on in (("--check", args.check), ("--verify", args.verify)) if on]
        if clash:
            raise UserError(f"--from cannot be combined with {' and '.join(clash)}: it checks the copy itself")
    settings = FetchSettings(timeout=args.timeout, retries=args.retries)
    failures: list[str] = []
    for spec in specs:
        try:
            if args.from_path is not None:
                provide_dataset(
                    spec,
                    args.root,
                    args.from_path,
                    force=args.force,
                    verify=not args.no_verify,
                    settings=settings,
                )
            elif args.verify:
                _verify(spec, args.root)
            elif args.check:
                report = check_dataset(spec, args.root, sample=args.sample)
                for line in report.lines():
                    print(line)
                for relpath in report.missing[:20]:
                    print(f"  missing: {spec.image_root(args.root) / relpath}")
                if not report.ok:
                    raise UserError(f"{spec.name} is not complete: {report.problems[0]}")
                mark_complete(spec, args.root, report)
                print(f"{spec.name}: complete")
            else:
                download_dataset(
                    spec,
                    args.root,
                    force=args.force,
                    verify=not args.no_verify,
                    keep_archives=args.keep_archives,
                    settings=settings,
                )
        except UserError as err:
            if len(specs) == 1:
                raise
            print(f"error: {err}")
            failures.append(spec.name)
    if failures:
        raise UserError(
            f"{len(failures)} of {len(specs)} datasets are not complete: {', '.join(failures)} (see the messages above)"
        )
    if args.stamp:
        _write_stamp(args.stamp, specs, args.root)
    return 0


def _verify(spec, root: str) -> None:
    from prompt_ot.data.download import verify_dataset
    from prompt_ot.errors import UserError

    report = verify_dataset(spec, root)
    for line in report.lines():
        print(line)
    if not report.ok:
        counts = [
            f"{len(names)} {what}"
            for what, names in (
                ("missing", report.missing),
                ("extra", report.extra),
                ("changed", report.changed),
                ("listed by the split but not there", report.unlisted),
            )
            if names
        ]
        raise UserError(
            f"{spec.name} in {report.folder} differs from the record of its {report.recorded} files: "
            f"{', '.join(counts)} (listed above); fetch it again with --force, or restore the files"
        )
    print(f"{spec.name}: all {report.recorded} recorded files present and unchanged; every listed image is there")


def _write_stamp(path: str, specs, root: str) -> None:
    """The pipeline's record that these datasets are complete; written only after every check passed."""
    import json

    from prompt_ot.data.download import dataset_is_complete
    from prompt_ot.errors import UserError
    from prompt_ot.utils.io import atomic_write_text

    for spec in specs:
        if not dataset_is_complete(spec, root):
            raise UserError(
                f"{spec.name} is not marked complete under {root}; run 'python -m prompt_ot download "
                f"{spec.name} --root {root} --check' after providing its files"
            )
    from prompt_ot.provenance import dataset_options

    payload = {"datasets": [r.name for r in specs], "folders": [r.folder for r in specs], "complete": True}
    # what the later stages' results depend on besides the images: the split, and the class names and templates
    # params.yaml gives (a change here makes both pipelines redo the stages that read the dataset)
    payload["identity"] = {r.name: {"split_sha256": r.split_sha256(root), **dataset_options(r.name)} for r in specs}
    text = json.dumps(payload, indent=1) + "\n"
    if Path(path).is_file() and Path(path).read_text() == text:
        return  # unchanged: its time stays, so that Snakemake redoes nothing downstream
    atomic_write_text(path, text)
