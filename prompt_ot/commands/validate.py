"""`python -m prompt_ot validate`: check params.yaml (every key, type, range and name) before any stage runs.

DVC interpolates dataset and method names from params.yaml into its stages' shell commands, so its
pipeline starts with this stage and every other stage depends on its output: a params file with an
unknown (or shell-injecting) name stops `dvc repro` before any command containing that name runs.
(Snakemake validates the same way when it reads the Snakefile.) The output is a fixed marker, so a
change to params.yaml that passes validation does not invalidate the stages after it.
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="params.yaml", help="experiment parameters (default: params.yaml)")
    parser.add_argument("--out", help="marker written when the file is valid (what the next stages depend on)")


def run(args) -> int:
    from prompt_ot.config import load_params
    from prompt_ot.utils.io import atomic_write_text

    load_params(args.params)  # raises UserError naming the key, the value and what is allowed
    print(f"{args.params} is valid")
    if args.out:
        atomic_write_text(args.out, json.dumps({"valid": True}) + "\n")
    return 0
