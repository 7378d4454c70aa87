"""`python -m prompt_ot mlflow init|sync`: create the tracking store and parent run; re-log pending runs.

    python -m prompt_ot mlflow init --project-root . --out runs/mlflow_parent.json
    python -m prompt_ot mlflow finish runs/mlflow_parent.json
    python -m prompt_ot mlflow sync runs

The store is ``MLFLOW_TRACKING_URI`` when set, else ``<project root>/mlflow.db``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prompt_ot.utils import args as check


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="{init,finish,sync}")
    init = actions.add_parser("init", help="create the store and experiment and start the pipeline's parent run")
    init.add_argument(
        "--project-root", default=".", type=check.existing_dir, help="project root that holds mlflow.db (default: .)"
    )
    init.add_argument(
        "--experiment", default="prompt-ot", type=check.non_empty, help="MLflow experiment name (default: prompt-ot)"
    )
    init.add_argument(
        "--parent-name",
        default=None,
        type=check.non_empty,
        help="name of the parent run (default: pipeline/<UTC time>)",
    )
    init.add_argument(
        "--out", required=True, type=check.out_file, help="JSON file to write with the tracking URI and parent run id"
    )
    finish = actions.add_parser("finish", help="end the pipeline's parent run (FINISHED, or FAILED with --failed)")
    finish.add_argument("parent_file", type=check.existing_file, help="the JSON file written by 'mlflow init'")
    finish.add_argument("--failed", action="store_true", help="mark the parent run FAILED")
    sync = actions.add_parser("sync", help="log the runs recorded in mlflow_pending.json files under RUNS_DIR")
    sync.add_argument(
        "runs_dir", type=check.existing_dir, help="folder searched (recursively) for mlflow_pending.json files"
    )
    sync.add_argument(
        "--project-root",
        default=".",
        type=check.out_dir,  # mlflow.db may be the first file there
        help="project root that holds mlflow.db (default: .)",
    )


def run(args: argparse.Namespace) -> int:
    if args.action == "finish":
        from prompt_ot.tracking import finish

        _check_parent_file(args.parent_file)
        run_id = finish(args.parent_file, "FAILED" if args.failed else "FINISHED")
        print(f"ended parent run {run_id}" if run_id else f"no parent run to end in {args.parent_file}")
        return 0
    return _init(args) if args.action == "init" else _sync(args)


def _check_parent_file(path: str) -> None:
    """The file must be what 'mlflow init' wrote (a JSON object naming the store), else nothing is ended."""
    from prompt_ot.errors import UserError
    from prompt_ot.utils.io import read_json

    record = read_json(path, what="parent_file", fix="give the file written by 'mlflow init'")
    if not isinstance(record, dict) or not {"tracking_uri", "parent_run_id"} <= set(record):
        raise UserError(
            f"parent_file {path} is not a parent-run record (no tracking_uri and parent_run_id); "
            "give the file written by 'mlflow init'"
        )


def _init(args: argparse.Namespace) -> int:
    from prompt_ot.tracking import prepare

    info = prepare(args.project_root, experiment=args.experiment, parent_name=args.parent_name, out=args.out)
    if info["parent_run_id"]:
        print(
            f"tracking store {info['tracking_uri']}, experiment {info['experiment']} "
            f"(id {info['experiment_id']}), parent run {info['parent_run_id']} -> {args.out}"
        )
    else:  # prepare has warned; the pipeline goes on and runs record themselves in pending files
        print(f"wrote {args.out} without a parent run")
    return 0


def _sync(args: argparse.Namespace) -> int:
    from prompt_ot.tracking import sync_pending

    runs_dir = Path(args.runs_dir)  # an existing folder: checked when the command line was parsed
    outcomes = sync_pending(runs_dir, args.project_root)
    if not outcomes:
        print(f"no pending MLflow runs under {runs_dir}")
        return 0
    failed = 0
    for outcome in outcomes:
        if outcome.error:
            failed += 1
            print(f"failed {outcome.pending_file}: {outcome.error}")
            continue
        print(f"logged {outcome.pending_file} as run {outcome.run_id}")
        for missing in outcome.missing_artifacts:
            print(f"  warning: artifact {missing} no longer exists and was not logged")
    print(f"synced {len(outcomes) - failed} of {len(outcomes)} pending runs")
    return 1 if failed else 0
