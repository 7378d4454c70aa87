"""`python -m prompt_ot <command> ...`: the stage commands that Snakemake, DVC and users call.

Each command lives in its own module that exposes ``add_arguments(parser)`` and ``run(args) -> int``.
Only the chosen command's module is imported, so ``--help`` answers without loading torch.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import re
import sys
from pathlib import Path

# name -> (module, one-line help). Order is the pipeline's order.
COMMANDS: dict[str, tuple[str, str]] = {
    "validate": ("prompt_ot.commands.validate", "check params.yaml (keys, types, ranges, dataset and method names)"),
    "plan": ("prompt_ot.commands.plan", "what the grid will cost before it runs: jobs, GPU memory, GPU-hours"),
    "download": ("prompt_ot.commands.download", "fetch a dataset's archives and split files and verify them"),
    "split": ("prompt_ot.commands.split", "write the few-shot training manifest for a dataset, shot count and seed"),
    "backbone": (
        "prompt_ot.commands.backbone",
        "make the backbone's weights available once (or pretrain the demo's tiny CLIP)",
    ),
    "cache": (
        "prompt_ot.commands.cache",
        "compute frozen-backbone features once: test images, class texts, training views",
    ),
    "train": (
        "prompt_ot.commands.train",
        "train one method's prompts on a few-shot manifest (resumes from its checkpoint)",
    ),
    "evaluate": (
        "prompt_ot.commands.evaluate",
        "test trained prompts: base/novel, cross-dataset, domain shift or few-shot",
    ),
    "report-backbones": (
        "prompt_ot.commands.report_backbones",
        "the per-backbone table of a grid that lists several backbones",
    ),
    "dvc-yaml": (
        "prompt_ot.commands.dvc_yaml",
        "write DVC's pipeline for a params.yaml that lists several backbones (one stage set per backbone)",
    ),
    "predict": (
        "prompt_ot.commands.predict",
        "classify images with a run's trained prompts and any class list (top-k labels and probabilities as CSV)",
    ),
    "mlflow": (
        "prompt_ot.commands.mlflow_cmd",
        "create the tracking store and parent run; re-log results recorded while MLflow was unreachable",
    ),
    "report": ("prompt_ot.commands.report", "collect metrics files into LaTeX/CSV/Markdown tables and plots"),
    "smoke": ("prompt_ot.commands.smoke", "CPU smoke run: train and evaluate a method on a tiny CLIP with real digits"),
    "forkserver": (
        "prompt_ot.commands.forkserver",
        "import torch and open_clip once and start each command that "
        "finds $PROMPT_OT_FORKSERVER as a fork of this process (a CPU grid's many jobs start at once)",
    ),
}


class CommandParser(argparse.ArgumentParser):
    """A parser whose errors (a bad value, a missing or unknown option) are one ``UserError`` line, not argparse's
    usage text and ``SystemExit``: ``main`` prints every mistake a user can make the same way."""

    def error(self, message: str):
        from prompt_ot.errors import UserError

        raise UserError(f"{message} (see '{self.prog} --help')")


def command_parser(name: str):
    """(module, parser) of one stage command, its options added (what ``main`` parses, and tests introspect)."""
    module = importlib.import_module(COMMANDS[name][0])
    parser = CommandParser(prog=f"python -m prompt_ot {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    return module, parser


def _top_parser() -> argparse.ArgumentParser:
    lines = "\n".join(f"  {name:<12} {text}" for name, (_, text) in COMMANDS.items())
    return argparse.ArgumentParser(
        prog="python -m prompt_ot",
        description="prompt-ot: prompt learning on CLIP with optimal-transport regularisation.",
        epilog=f"commands:\n{lines}\n\nrun 'python -m prompt_ot <command> --help' for a command's options",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


# errno values and OS messages of a write that failed because the disk (or quota, or file-size limit) is full
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_FULL_TEXT = re.compile(
    r"no space left on device|disk quota exceeded|file too large|os error (28|122|27)\b"
    r"|\d+ requested and \d+ written",
    re.IGNORECASE,
)


def _disk_full(err: BaseException) -> BaseException | None:
    """The exception in ``err``'s chain that says a write ran out of space, or None.

    Besides OSError with ENOSPC / EDQUOT / EFBIG this recognises the wrapped forms: safetensors' and torch's
    writers report the OS error in their message, and numpy's ``tofile`` reports a short write without errno.
    """
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _FULL_ERRNOS:
            return err
        if isinstance(err, (OSError, RuntimeError)) or type(err).__name__ == "SafetensorError":
            if _FULL_TEXT.search(str(err)):
                return err
        err = err.__cause__ or err.__context__
    return None


def _disk_full_message(err: BaseException, args: argparse.Namespace) -> str:
    where = getattr(args, "out", None) or getattr(args, "stamp", None) or getattr(err, "filename", None)
    if isinstance(where, (list, tuple)):  # a packed train command writes several run folders
        where = ", ".join(map(str, where))
    target = f" while writing {where}" if where else " while writing this command's outputs"
    return (
        f"error: no space left on device{target} ({err}); free space (or raise the quota or file-size limit) "
        "and rerun: completed outputs are kept and unfinished ones were not put in place"
    )


def _declare_datasets(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """The datasets that the --params file declares (custom_datasets) are names the options accept: read them before
    the options are checked. A params file that does not load is left to the command, which says why."""
    from prompt_ot.config import load_params
    from prompt_ot.errors import UserError

    path = parser.get_default("params")
    for i, arg in enumerate(argv):
        if arg == "--params" and i + 1 < len(argv):
            path = argv[i + 1]
        elif arg.startswith("--params="):
            path = arg.split("=", 1)[1]
    if not (path and Path(path).is_file()):
        return
    import yaml

    from prompt_ot.utils.io import safe_load_yaml

    try:
        if "custom_datasets" in (safe_load_yaml(Path(path).read_text(encoding="utf-8")) or {}):
            load_params(path)
    except (UserError, yaml.YAMLError, UnicodeDecodeError, TypeError):
        pass


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
    if name in COMMANDS and name != "forkserver":
        from prompt_ot.forkclient import run_through_server

        status = run_through_server(argv)  # None: no fork server named or answering; run here
        if status is not None:
            return status
    # One CPU thread per job unless the caller says otherwise: results then do not depend on which tool ran
    # the job (Snakemake exports OMP_NUM_THREADS=<rule threads>, DVC exports nothing), and parallel jobs do
    # not oversubscribe the cores. Stages that want more threads (pretraining) set them from their params.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", os.environ["OMP_NUM_THREADS"])
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; known commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    from prompt_ot.errors import UserError

    module, parser = command_parser(name)
    args = None
    try:
        # every option is checked here (types, then the command's own cross-checks) before any work starts
        _declare_datasets(parser, argv[1:])
        args = parser.parse_args(argv[1:])
        return int(module.run(args) or 0)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        full = _disk_full(err)
        if full is None:
            raise  # a programming error: keep the traceback
        print(_disk_full_message(full, args), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; completed outputs are kept and the next run resumes", file=sys.stderr)
        return 130
