"""`python -m prompt_ot <command> ...`: the stage commands that Snakemake, DVC and users call.

Each command lives in its own module that exposes ``add_arguments(parser)`` and ``run(args) -> int``.
Only the chosen command's module is imported, so ``--help`` answers without loading torch.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> (module, one-line help). Order is the pipeline's order.
COMMANDS: dict[str, tuple[str, str]] = {
    "download": ("prompt_ot.commands.download", "fetch a dataset's archives and split files and verify them"),
    "split": ("prompt_ot.commands.split", "write the few-shot training manifest for a dataset, shot count and seed"),
    "backbone": ("prompt_ot.commands.backbone", "make the backbone's weights available once (or pretrain the demo's tiny CLIP)"),
    "cache": ("prompt_ot.commands.cache", "compute frozen-backbone features once: test images, class texts, training views"),
    "train": ("prompt_ot.commands.train", "train one method's prompts on a few-shot manifest (resumes from its checkpoint)"),
    "evaluate": ("prompt_ot.commands.evaluate", "test trained prompts: base/novel, cross-dataset, domain shift or few-shot"),
    "mlflow": ("prompt_ot.commands.mlflow_cmd", "create the tracking store and parent run; re-log results recorded while MLflow was unreachable"),
    "report": ("prompt_ot.commands.report", "collect metrics files into LaTeX/CSV/Markdown tables and plots"),
    "smoke": ("prompt_ot.commands.smoke", "CPU smoke run: train and evaluate a method on a tiny CLIP with real digits"),
}


def _top_parser() -> argparse.ArgumentParser:
    lines = "\n".join(f"  {name:<12} {text}" for name, (_, text) in COMMANDS.items())
    return argparse.ArgumentParser(
        prog="python -m prompt_ot",
        description="prompt-ot: prompt learning on CLIP with optimal-transport regularisation.",
        epilog=f"commands:\n{lines}\n\nrun 'python -m prompt_ot <command> --help' for a command's options",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    top.add_argument("command", nargs="?", choices=list(COMMANDS), metavar="command")
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0 if argv else 2
    if argv[0] == "--version":
        from prompt_ot import __version__

        print(__version__)
        return 0
    name = argv[0]
    # One CPU thread per job unless the caller says otherwise: results then do not depend on which tool ran
    # the job (Snakemake exports OMP_NUM_THREADS=<rule threads>, DVC exports nothing), and parallel jobs do
    # not oversubscribe the cores. Stages that want more threads (pretraining) set them from their params.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", os.environ["OMP_NUM_THREADS"])
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; known commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"python -m prompt_ot {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    from prompt_ot.errors import UserError

    try:
        return int(module.run(args) or 0)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; completed outputs are kept and the next run resumes", file=sys.stderr)
        return 130
