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

from prompt_ot.utils import args as check


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="params.yaml", help="experiment parameters (default: params.yaml)")
    parser.add_argument(
        "--out", type=check.out_file, help="marker written when the file is valid (what the next stages depend on)"
    )
    parser.add_argument(
        "--resolved",
        type=check.out_file,
        metavar="FILE",
        help="also write the resolved values each DVC stage declares as params (prompt_ot.stage_params)",
    )
    parser.add_argument(
        "--backbone-axis",
        nargs="+",
        metavar="KEY",
        type=check.non_empty,
        help="the backbone keys the DVC pipeline has stages for (written by dvc-yaml): params.yaml must list these",
    )


def run(args) -> int:
    from prompt_ot.config import backbone_entries, load_params, multi_backbone
    from prompt_ot.errors import UserError
    from prompt_ot.utils.io import atomic_write_text

    params = load_params(args.params)  # raises UserError naming the key, the value and what is allowed
    keys = [key for key, _ in backbone_entries(params)] if multi_backbone(params) else []
    write_again = f"python -m prompt_ot dvc-yaml --params {args.params} --out dvc.yaml"
    if args.backbone_axis is not None and keys != list(args.backbone_axis):  # a dvc.yaml written for other backbones
        listed = f"lists the backbones {', '.join(keys)}" if keys else "names one backbone"
        raise UserError(
            f"{args.params} {listed}, but dvc.yaml has stages for {', '.join(args.backbone_axis)}: write it again "
            f"({write_again})" + ("" if keys else ", or use the project's dvc.yaml for one backbone")
        )
    if args.resolved and keys and args.backbone_axis is None:  # the project's dvc.yaml: stages for one backbone
        raise UserError(
            f"{args.params}: backbone lists {len(keys)} backbones ({', '.join(keys)}), and dvc.yaml runs one: write "
            f"the pipeline with one stage set per backbone ({write_again}), run the list with Snakemake, or "
            "reproduce one backbone at a time, e.g. dvc exp run -S 'backbone={name: ViT-B-16, pretrained: openai}'"
        )
    print(f"{args.params} is valid")
    if args.resolved:
        from prompt_ot.stage_params import resolved_params_json

        atomic_write_text(args.resolved, resolved_params_json(params))
    if args.out:
        atomic_write_text(args.out, json.dumps({"valid": True}) + "\n")
    return 0
