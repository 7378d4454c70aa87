"""`python -m prompt_ot dvc-yaml`: DVC's pipeline for a params.yaml that lists several backbones, one stage set per
backbone (prompt_ot/dvc_backbones.py), written from the project's dvc.yaml."""

from __future__ import annotations

import argparse
from pathlib import Path

from prompt_ot.utils import args as check

PROJECT_DVC_YAML = Path(__file__).resolve().parents[2] / "dvc.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--params", default="params.yaml", type=check.existing_file, help="the grid (default: params.yaml)"
    )
    parser.add_argument(
        "--template",
        default=str(PROJECT_DVC_YAML),
        type=check.existing_file,
        help="the project's dvc.yaml, whose stages are repeated for each backbone (default: the project's)",
    )
    parser.add_argument("--out", required=True, type=check.out_file, help="the dvc.yaml to write (beside params.yaml)")


def run(args: argparse.Namespace) -> int:
    from prompt_ot.dvc_backbones import write

    keys = write(args.params, args.template, args.out)
    print(f"wrote {args.out}: the stages that read the backbone once for each of {', '.join(keys)}")
    return 0
