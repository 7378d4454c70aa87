"""`python -m prompt_ot report-backbones`: the per-backbone table of a grid whose params.yaml lists several backbones
(each protocol's headline number per method, one column per backbone; prompt_ot/report/backbones.py)."""

from __future__ import annotations

import argparse

from prompt_ot.utils import args as check


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="params.yaml", help="experiment parameters (default: params.yaml)")
    parser.add_argument("--out", required=True, type=check.out_dir, help="folder for per_backbone.tex, .md and .csv")


def run(args: argparse.Namespace) -> int:
    from prompt_ot.config import load_params
    from prompt_ot.report.backbones import write_per_backbone

    for path in write_per_backbone(load_params(args.params), args.out):
        print(f"wrote {path}")
    return 0
