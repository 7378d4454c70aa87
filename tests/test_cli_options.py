"""Every option of every stage command, given a bad value a user could type: one ``error:`` line on stderr naming
the option, a non-zero exit, no traceback, and the out folder (with a result computed earlier) left untouched.

The table below is checked against the commands' argparse parsers: a stage that gains an option fails
``test_the_table_covers_every_option_of_every_stage`` until the option has bad values here (or a reason why none
exists, for flags). Each stage's base command line is the one the module fixture runs successfully first, so the
bad value is the only thing wrong with each case. Cases run in-process through ``prompt_ot.cli.main`` (an exception
escaping it fails the case with its traceback); the fork server's cases, and a few others, run as real processes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from prompt_ot.cli import COMMANDS, command_parser, main
from tests.support.data import make_fixture
from tests.support.params import shrunk_params

ROOT = Path(__file__).resolve().parents[1]
PREVIOUS = b"a result computed earlier\n"


# ------------------------------------------------------------------ the stages' base command lines
# key -> value: a key without dashes is a positional (its value only is written), True is a flag, a list is
# several values; "{name}" is a fixture path, "{out}" the case's out folder (it holds keep.txt and, for stages
# that write a file, that file as computed earlier).
STAGES: dict[str, dict] = {
    "validate": {"--params": "{params}", "--out": "{out}/valid.json"},
    "report-backbones": {"--params": "{params}", "--out": "{out}/per_backbone"},
    "dvc-yaml": {"--params": "{backbones_params}", "--out": "{out}/dvc.yaml"},
    "plan": {"--params": "{params}", "--gpus": "2", "--gpu-memory": "24GB"},
    "download": {"datasets": "dtd", "--root": "{download_root}", "--check": True, "--stamp": "{out}/dtd.json"},
    "split": {
        "dataset": "dtd",
        "--root": "{root}",
        "--subset": "base",
        "--shots": "2",
        "--seed": "1",
        "--sampler": "dassl",
        "--out": "{out}/manifest.json",
        "--params": "{params}",
    },
    "backbone": {"--params": "{params}", "--root": "{root}", "--out": "{out}/backbone"},
    "cache test": {
        "dataset": "dtd",
        "--root": "{root}",
        "--backbone": "tiny-vit",
        "--pretrained": "none",
        "--out": "{out}/cache",
        "--device": "cpu",
        "--params": "{params}",
    },
    "cache train": {
        "--manifest": "{manifest}",
        "--root": "{root}",
        "--backbone": "tiny-vit",
        "--pretrained": "none",
        "--epochs": "0",
        "--seed": "1",
        "--out": "{out}/cache",
        "--device": "cpu",
    },
    "train": {
        "--params": "{params}",
        "--protocol": "base2novel",
        "--method": "zeroshot",
        "--seed": "1",
        "--manifest": "{manifest}",
        "--train-cache": "{train_cache}",
        "--out": "{out}/run",
        "--device": "cpu",
    },
    "evaluate": {
        "--params": "{params}",
        "--protocol": "base2novel",
        "--method": "zeroshot",
        "--dataset": "dtd",
        "--shots": "2",
        "--seed": "1",
        "--prompts": "{prompts}",
        "--test-cache-root": "{test_caches}",
        "--out": "{out}/metrics.json",
        "--device": "cpu",
    },
    "predict": {
        "--run": "{work}/run",
        "--images": "{root}/dtd/images",
        "--classes": ["banded", "striped"],
        "--top-k": "2",
        "--out": "{out}/predictions.csv",
        "--params": "{params}",
        "--device": "cpu",
    },
    "mlflow init": {"--project-root": "{work}", "--experiment": "options", "--out": "{out}/parent.json"},
    "mlflow finish": {"parent_file": "{parent}"},
    "mlflow sync": {"runs_dir": "{runs}", "--project-root": "{work}"},
    "report": {
        "--metrics": "{metrics}",
        "--params": "{params}",
        "--allow-missing": True,  # one metrics file of the grid
        "--no-published": True,
        "--no-figures": True,
        "--out": "{out}/report",
    },
    # not run by the fixture: a minute of training, and a server that runs until stopped
    "smoke": {
        "--method": "coop",
        "--epochs": "1",
        "--shots": "1",
        "--seed": "1",
        "--backbone": "tiny-vit",
        "--out": "{out}/smoke",
    },
    "forkserver": {"--socket": "{tmp}/s.sock", "--pidfile": "{tmp}/server.pid"},
}
FILE_OUTPUT = {
    "validate": "valid.json",
    "download": "dtd.json",
    "split": "manifest.json",
    "evaluate": "metrics.json",
    "predict": "predictions.csv",
    "mlflow init": "parent.json",
}
SUBPROCESS = {"forkserver"}  # a check that failed to refuse would leave a server running: a real process, timed out


# ------------------------------------------------------------------ bad values
MISSING = "{tmp}/missing/file"  # nothing there
FOLDER = "{tmp}"  # a folder where a file is wanted
JUNK = "{junk}"  # a file that is neither JSON, YAML nor safetensors
A_FILE = "{out}/keep.txt"  # a file where a folder is wanted (it must survive)
UNDER_A_FILE = "{out}/keep.txt/inside"  # an output below a file: cannot be written
NAN_PARAMS = "{nan_params}"  # a params.yaml with train.lr: .nan


@dataclass
class Bad:
    value: object
    words: tuple = ()  # words the error line must hold (default: the option's name)
    drop: tuple = ()  # options of the base line left out for this case
    extra: dict = field(default_factory=dict)  # options added or changed besides the bad one


def counts(*values):
    return [Bad(v) for v in values]


PATH_IN = [Bad(MISSING), Bad(FOLDER)]
PARAMS = [
    Bad(MISSING, ("--params", "does not exist")),
    Bad(FOLDER, ("--params", "folder")),
    Bad(JUNK, ("--params", "not a YAML text file")),
    Bad("{yaml_list}", ("must be a mapping",)),
    Bad(NAN_PARAMS, ("train.lr", "must be a finite number, got nan")),
]
OUT_FILE = [Bad(FOLDER, ("--out", "is a folder")), Bad(UNDER_A_FILE, ("--out", "is a file, not a folder"))]
OUT_DIR = [Bad(A_FILE, ("--out", "is a file")), Bad(UNDER_A_FILE, ("--out", "is a file, not a folder"))]
DEVICE = [Bad("gpu", ("--device", "unknown device 'gpu'")), Bad("cuda:99", ("--device", "cuda:99"))]
ROOT_DIR = [Bad(A_FILE, ("--root", "is a file")), Bad(UNDER_A_FILE, ("--root",))]
NOT_NEGATIVE = counts("-1", "x", "nan", "1.5")
POSITIVE = counts("0", "-2", "x", "inf")


# the grids here have one backbone: a key is refused (with a list, a key that names none is: tests/test_backbones.py)
BACKBONE_KEY = [Bad("vit_b_16_openai", ("--backbone-key",))]


def cache_common(manifest_side: bool) -> dict:
    table = {
        "--root": ROOT_DIR + [Bad(MISSING, ("--root", "does not exist"))],
        "--backbone": [
            Bad("", ("--backbone", "must not be empty")),
            Bad("vit-huge-typo", ("unknown backbone 'vit-huge-typo'", "tiny-vit")),
        ],
        "--pretrained": [
            Bad("{tmp}/no_weights.safetensors", ("checkpoint file", "does not exist")),
            Bad("bogus_tag", ("unknown pretrained tag", "'bogus_tag'")),
        ],
        "--out": OUT_DIR,
        "--backbone-key": BACKBONE_KEY,
        "--batch-size": [
            Bad("0", ("--batch-size", "positive integer")),
            Bad("-3", ("--batch-size", "-3")),
            Bad("x", ("--batch-size", "invalid int value")),
        ],
        "--device": DEVICE,
        "--workers": counts("-1", "x"),
        "--params": PARAMS,
        "--precision": [Bad("fp8", ("--precision", "invalid choice"))],
    }
    return table


BAD: dict[str, dict[str, list[Bad]]] = {
    "plan": {
        "--params": PARAMS,
        "--gpus": POSITIVE + counts("1.5"),
        "--gpu-memory": [Bad(v, ("--gpu-memory", "not a memory size")) for v in ("lots", "0GB", "24XB", "nanGB", "")]
        + [Bad("-24GB")],
    },
    "report-backbones": {"--params": PARAMS, "--out": OUT_DIR},
    "dvc-yaml": {
        "--params": PARAMS + [Bad("{params}", ("names one backbone", "project's dvc.yaml"))],
        "--template": [
            Bad(MISSING, ("--template", "does not exist")),
            Bad(JUNK, ("cannot read the template", "project's dvc.yaml")),
            Bad("{params}", ("is not the project's dvc.yaml",)),
        ],
        "--out": OUT_FILE,
    },
    "validate": {
        "--params": PARAMS,
        "--out": OUT_FILE,
        "--resolved": [Bad(FOLDER, ("--resolved", "is a folder")), Bad(UNDER_A_FILE, ("--resolved",))],
        "--backbone-axis": [  # a dvc.yaml written for a list of backbones, given this file's one backbone
            Bad(["tiny", "demo"], ("names one backbone", "dvc.yaml has stages for tiny, demo", "write it again")),
            Bad([" "], ("--backbone-axis", "must not be empty")),
        ],
    },
    "download": {
        "datasets": [Bad("mnist", ("unknown dataset 'mnist'", "known datasets"))],
        "--root": ROOT_DIR,
        "--sample": POSITIVE,
        "--timeout": counts("0", "-1", "nan", "inf", "-inf", "abc"),
        "--retries": POSITIVE,
        "--stamp": [Bad(FOLDER, ("--stamp", "is a folder")), Bad(UNDER_A_FILE, ("--stamp",))],
        "--params": PARAMS,
    },
    "split": {
        "dataset": [Bad("mnist", ("argument dataset", "unknown dataset 'mnist'"))],
        "--root": ROOT_DIR + [Bad(MISSING, ("--root", "does not exist", "python -m prompt_ot download dtd"))],
        "--subset": [Bad("half", ("--subset", "unknown subset 'half'", "novel"))],
        "--shots": POSITIVE + counts("nan", "2.5"),
        "--seed": NOT_NEGATIVE,
        "--sampler": [Bad("random", ("--sampler", "invalid choice"))],
        "--out": OUT_FILE,
        "--params": PARAMS,
    },
    "backbone": {"--params": PARAMS, "--root": ROOT_DIR, "--out": OUT_DIR, "--backbone-key": BACKBONE_KEY},
    "cache test": cache_common(False)
    | {
        "dataset": [Bad("mnist", ("argument dataset", "unknown dataset 'mnist'"))],
        "--templates": [
            Bad("a photo", ("--templates", "exactly one '{}'")),
            Bad("{{}} and {{}}", ("--templates", "exactly one")),
            Bad("a {{name}} {{}}", ("--templates", "exactly one")),
        ],
    },
    "cache train": cache_common(True)
    | {
        "--manifest": PATH_IN + [Bad(JUNK, ("manifest", "not valid JSON"))],
        "--epochs": NOT_NEGATIVE,
        "--seed": NOT_NEGATIVE,
        "--train-short-side": NOT_NEGATIVE,
    },
    "train": {
        "--params": PARAMS,
        "--backbone-key": BACKBONE_KEY,
        "--protocol": [Bad("domain_generalization", ("--protocol", "invalid choice"))],
        "--method": [
            Bad("coprompt", ("unknown method 'coprompt'", "known methods")),
            Bad("", ("--method", "must not be empty")),
        ],
        "--seed": NOT_NEGATIVE + [Bad(["1", "2"], ("--seed", "one value per packed run"))],
        "--manifest": PATH_IN
        + [
            Bad(JUNK, ("manifest", "not valid JSON")),
            Bad(["{manifest}", "{manifest}"], ("--manifest", "one value per packed run")),
        ],
        "--train-cache": [
            Bad(MISSING),
            Bad(A_FILE),
            Bad("{empty_dir}", ("cache",)),
            Bad(["{train_cache}", "{train_cache}"], ("--train-cache", "one value per packed run")),
        ],
        "--out": OUT_DIR
        + [
            Bad(
                ["{out}/run", "{out}/run"],
                ("--out", "distinct"),
                extra={"--seed": ["1", "2"], "--manifest": ["{manifest}"] * 2, "--train-cache": ["{train_cache}"] * 2},
            )
        ],
        "--device": DEVICE,
    },
    "evaluate": {
        "--params": PARAMS,
        "--backbone-key": BACKBONE_KEY,
        "--protocol": [Bad("zero_shot", ("--protocol", "invalid choice"))],
        "--method": [
            Bad("coprompt", ("unknown method 'coprompt'",)),
            Bad("", ("--method", "must not be empty")),
            Bad("coop", ("method 'zeroshot'", "asked to label method 'coop'")),
        ],
        "--dataset": [
            Bad("mnist", ("--dataset", "unknown dataset 'mnist'")),
            Bad("eurosat", ("dataset 'dtd'", "asked to label dataset 'eurosat'")),
        ],
        "--shots": POSITIVE + [Bad("4", ("shots 2", "asked to label shots 4"))],
        "--seed": NOT_NEGATIVE + [Bad("2", ("seed 1", "asked to label seed 2"))],
        "--prompts": PATH_IN + [Bad(JUNK, ("prompt weights", "damaged or not a safetensors file"))],
        "--test-cache-root": [
            Bad(MISSING),
            Bad(A_FILE),
            Bad("{empty_dir}", ("no complete test feature cache", "empty/dtd")),
        ],
        "--targets": [
            Bad(["dtd", "mnist"], ("--targets", "unknown dataset 'mnist'")),
            Bad(["dtd"], ("--targets dtd", "base2novel protocol tests on --dataset only")),
            Bad([], ("--targets is required", "cross_dataset"), extra={"--protocol": "cross_dataset"}),
        ],
        # a good --reuse (another job's predictions of the same prompts): tests/test_e2e.py
        "--reuse": PATH_IN + [Bad(JUNK, ("--reuse", "not a predictions file"))],
        "--out": OUT_FILE,
        "--device": DEVICE,
    },
    "predict": {
        "--run": [Bad(MISSING), Bad(A_FILE), Bad("{empty_dir}", ("empty", "no prompts.safetensors"))],
        "--images": [
            Bad(MISSING, ("image path", "missing/file", "does not exist")),
            Bad("{empty_dir}", ("folder", "empty", "no image files")),
            Bad(JUNK, ("junk.bin", "cannot be read")),
        ],
        "--classes": [
            Bad([], ("--classes", "expected at least one argument")),
            Bad(["banded", "banded"], ("more than once: banded",)),
            Bad(["banded", " "], ("class name is empty",)),
        ],
        "--classes-file": [
            Bad(MISSING, ("--classes-file", "does not exist"), drop=("--classes",)),
            Bad(FOLDER, ("--classes-file", "is a folder"), drop=("--classes",)),
            Bad(JUNK, ("class file", "not a UTF-8 text file"), drop=("--classes",)),
            Bad("{manifest}", ("not allowed with argument --classes",)),
        ],
        "--top-k": POSITIVE + [Bad("3", ("--top-k 3", "number of classes (2)"))],
        "--out": OUT_FILE,
        "--params": PARAMS,
        "--template": [Bad("a photo", ("--template", "exactly one '{}'"))],
        "--device": DEVICE,
    },
    "mlflow init": {
        "--project-root": [Bad(MISSING), Bad(A_FILE)],
        "--experiment": [Bad("", ("--experiment", "must not be empty")), Bad("  ", ("--experiment", "empty"))],
        "--parent-name": [Bad("", ("--parent-name", "must not be empty"))],
        "--out": OUT_FILE,
    },
    "mlflow finish": {
        "parent_file": PATH_IN
        + [
            Bad(JUNK, ("parent_file", "not valid JSON")),
            Bad("{yaml_list}", ("parent_file", "not valid JSON")),
            Bad("{json_list}", ("parent_file", "not a parent-run record")),
        ],
    },
    # sync's project root may not exist yet (the store is created there): only a file is wrong
    "mlflow sync": {"runs_dir": [Bad(MISSING), Bad(A_FILE)], "--project-root": [Bad(A_FILE)]},
    "report": {
        "--metrics": PATH_IN
        + [
            Bad(JUNK, ("metrics file", "not valid JSON")),
            Bad("{manifest}", ("manifest.json", "not a prompt_ot metrics file")),
        ],
        "--metrics-list": [Bad(v, drop=("--metrics",)) for v in (MISSING, FOLDER)]
        + [Bad("{junk_list}", ("missing/metrics.json", "does not exist"), drop=("--metrics",))],
        "--metrics-dir": [Bad(v, drop=("--metrics",)) for v in (MISSING, A_FILE)],
        "--params": PARAMS,
        "--published": [
            Bad(A_FILE, ("--published", "is a file")),
            Bad(MISSING, ("--published", "does not exist"), drop=("--no-published",)),
        ],
        "--out": OUT_DIR,
        "--reference": [
            Bad("", ("--reference", "must not be empty")),
            Bad("prompt_ott", ("--reference prompt_ott", "no runs")),
        ],
        "--bootstrap-resamples": POSITIVE,
        "--bootstrap-seed": NOT_NEGATIVE,
        "--per-class": [Bad("mnist", ("unknown dataset 'mnist'",)), Bad("caltech101", ("no run holds per-class",))],
    },
    "smoke": {
        "--method": [Bad("coprompt", ("unknown method 'coprompt'",)), Bad("", ("--method", "must not be empty"))],
        "--epochs": POSITIVE,
        "--shots": POSITIVE,
        "--seed": NOT_NEGATIVE,
        "--backbone": [
            Bad("vit-huge-typo", ("unknown backbone 'vit-huge-typo'",)),
            Bad("", ("--backbone", "must not be empty")),
        ],
        "--out": OUT_DIR,
    },
    "forkserver": {
        "--socket": [
            Bad("{tmp}/missing/s.sock", ("--socket", "does not exist")),
            Bad("{tmp}/" + "s" * 120, ("--socket", "shorter")),
            Bad(A_FILE, ("--socket", "exists and is not a socket")),
        ],
        "--pidfile": [Bad(FOLDER, ("--pidfile", "is a folder")), Bad(UNDER_A_FILE, ("--pidfile",))],
        "command": [Bad(["--", "no-such-command-prompt-ot"], ("no-such-command-prompt-ot", "not found on PATH"))],
    },
}

# options that no typed value can make wrong: flags (present or not), and the help every parser has
NO_BAD_VALUE = {
    ("plan", "--precision-check"): "a flag",
    ("download", "--check"): "a flag",
    ("download", "--force"): "a flag",
    ("download", "--keep-archives"): "a flag",
    ("download", "--no-verify"): "a flag",
    ("download", "--list"): "a flag",
    ("download", "--verify"): "a flag",
    ("download", "--from"): "excludes --check (the good command here); its bad values in tests/test_download_from.py",
    ("cache test", "--skip-bad"): "a flag",
    ("cache test", "--replace"): "a flag",
    ("cache train", "--skip-bad"): "a flag",
    ("cache train", "--replace"): "a flag",
    ("mlflow finish", "--failed"): "a flag",
    ("report", "--no-published"): "a flag",
    ("report", "--no-figures"): "a flag",
    ("report", "--allow-missing"): "a flag",
    ("report", "--no-statistics"): "a flag",
}


# ------------------------------------------------------------------ introspection
def _parsers():
    """(stage, parser) of every command and sub-command, as ``main`` builds them."""
    for name in COMMANDS:
        _, parser = command_parser(name)
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            yield name, parser
        for sub in subs:
            for side, subparser in sub.choices.items():
                yield f"{name} {side}", subparser


def _option_name(action: argparse.Action) -> str:
    return max(action.option_strings, key=len) if action.option_strings else action.dest


def parser_options() -> set[tuple[str, str]]:
    return {
        (stage, _option_name(action))
        for stage, parser in _parsers()
        for action in parser._actions
        if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction))
    }


def test_the_table_covers_every_option_of_every_stage():
    options = parser_options()
    covered = {(stage, option) for stage, table in BAD.items() for option in table} | set(NO_BAD_VALUE)
    assert not options - covered, (
        f"options without bad values in BAD (or a reason in NO_BAD_VALUE): {sorted(options - covered)}"
    )
    assert not covered - options, f"entries for options that no longer exist: {sorted(covered - options)}"
    assert set(STAGES) == {stage for stage, _ in _parsers()} == set(BAD)
    assert all(BAD[stage][option] for stage, option in options - set(NO_BAD_VALUE))


# ------------------------------------------------------------------ the fixture: every base line, run once
def _small_params() -> dict:
    # the paper grid's params cut to dtd, the tiny random CLIP, 2 epochs
    return shrunk_params("paper", mlflow={"experiment": "cli-options"})


def expand(value, paths: dict):
    if isinstance(value, list):
        return [expand(v, paths) for v in value]
    return value.format(**paths) if isinstance(value, str) else value


def argv_of(stage: str, paths: dict, changes: dict | None = None, drop: tuple = ()) -> list[str]:
    options = {k: v for k, v in (STAGES[stage] | (changes or {})).items() if k not in drop}
    argv = stage.split()
    for key, value in options.items():
        if value is False or value is None:
            continue
        value = expand(value, paths)
        if key.startswith("-"):
            argv.append(key)
        if value is not True:
            argv += value if isinstance(value, list) else [value]
    return argv


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli_options")
    saved = {k: os.environ.get(k) for k in ("PROMPT_OT_MLFLOW", "PROMPT_OT_FORKSERVER")}
    os.environ["PROMPT_OT_MLFLOW"] = "off"  # no store: the stages' own checks are under test
    os.environ.pop("PROMPT_OT_FORKSERVER", None)
    root = base / "data"
    make_fixture("dtd", root, num_classes=4, per_split=(4, 1, 2))
    make_fixture("dtd", base / "download", num_classes=47, per_split=(1, 1, 1))  # what --check calls complete
    params = _small_params()
    (base / "params.yaml").write_text(yaml.safe_dump(params))
    two = [{"name": "tiny-vit", "pretrained": "none", "key": "tiny"}, {"name": "demo-vit", "pretrained": "none"}]
    (base / "backbones.yaml").write_text(yaml.safe_dump(params | {"backbone": two}))
    params["train"]["lr"] = float("nan")
    (base / "nan_params.yaml").write_text(yaml.safe_dump(params))
    assert "lr: .nan" in (base / "nan_params.yaml").read_text()
    (base / "junk.bin").write_bytes(b"\xff\xfe\x00{not json, not yaml: [")
    (base / "list.yaml").write_text("- just\n- a list\n")
    (base / "list.json").write_text("[1, 2]\n")
    (base / "list.txt").write_text("# a metrics list naming a file that is not there\nmissing/metrics.json\n")
    (base / "empty").mkdir()
    (base / "runs").mkdir()
    paths = {
        "work": str(base),
        "root": str(root),
        "download_root": str(base / "download"),
        "params": str(base / "params.yaml"),
        "backbones_params": str(base / "backbones.yaml"),
        "nan_params": str(base / "nan_params.yaml"),
        "junk": str(base / "junk.bin"),
        "yaml_list": str(base / "list.yaml"),
        "json_list": str(base / "list.json"),
        "junk_list": str(base / "list.txt"),
        "empty_dir": str(base / "empty"),
        "runs": str(base / "runs"),
        "manifest": str(base / "manifest.json"),
        "train_cache": str(base / "train_cache"),
        "prompts": str(base / "run" / "prompts.safetensors"),
        "test_caches": str(base / "test"),
        "metrics": str(base / "metrics" / "metrics.json"),
        "parent": str(base / "parent.json"),
    }
    # each stage's base line, with its outputs where the later stages read them: all must succeed
    outs = {
        "split": base,
        "cache train": base / "train_cache_out",
        "train": base / "run_out",
        "cache test": base / "test_out",
        "evaluate": base / "metrics",
        "mlflow init": base,
    }
    plan = [
        ("validate", {}),
        ("download", {}),
        ("split", {}),
        ("cache train", {"--out": "{train_cache}"}),
        ("train", {"--out": str(base / "run")}),
        ("cache test", {"--out": str(base / "test" / "dtd")}),
        ("evaluate", {}),
        ("predict", {}),
        ("backbone", {}),
        ("mlflow init", {}),
        ("mlflow finish", {}),
        ("mlflow sync", {}),
        ("report", {}),
        ("dvc-yaml", {}),
    ]
    for stage, changes in plan:
        out = outs.get(stage, base / f"{stage.replace(' ', '_')}_out")
        argv = argv_of(stage, paths | {"out": str(out), "tmp": str(base)}, changes)
        assert main(argv) == 0, f"the base line of {stage} failed: {argv}"
    assert Path(paths["prompts"]).is_file() and Path(paths["metrics"]).is_file() and Path(paths["parent"]).is_file()
    yield paths
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


CASES = [
    pytest.param(
        stage,
        option,
        bad,
        id=f"{stage.replace(' ', '-')}{option if option.startswith('-') else ':' + option}"
        f"={'+'.join(bad.value) if isinstance(bad.value, list) else bad.value}",
    )
    for stage, table in BAD.items()
    for option, bads in table.items()
    for bad in bads
]


def _run(stage: str, argv: list[str], capsys) -> tuple[int, str]:
    if stage in SUBPROCESS:
        env = {k: v for k, v in os.environ.items() if k != "PROMPT_OT_FORKSERVER"}
        result = subprocess.run(
            [sys.executable, "-m", "prompt_ot", *argv], capture_output=True, text=True, cwd=ROOT, env=env, timeout=60
        )
        return result.returncode, result.stderr
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as exit:  # argparse's own exit would show here (it must not happen for a bad value)
        rc = exit.code
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("stage, option, bad", CASES)
def test_a_bad_value_is_refused_before_any_work(work, capsys, tmp_path, stage, option, bad):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_bytes(PREVIOUS)
    if stage in FILE_OUTPUT:
        (out / FILE_OUTPUT[stage]).write_bytes(PREVIOUS)
    paths = work | {"out": str(out), "tmp": str(tmp_path)}
    before = snapshot(out)
    argv = argv_of(stage, paths, {**bad.extra, option: bad.value}, bad.drop)
    rc, err = _run(stage, argv, capsys)
    assert rc != 0, f"{argv} exited 0"
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), f"expected one error line, got {err!r}"
    for word in bad.words or (option,):
        assert word in lines[0], f"{word!r} missing from: {lines[0]}"
    assert snapshot(out) == before, "a refused command changed its out folder"
    assert not (tmp_path / "missing").exists(), "a refused command created a folder it was given"


# ------------------------------------------------------------------ the same as real processes


@pytest.mark.parametrize(
    "argv, words",
    [
        (["split", "dtd", "--shots", "nan", "--out", "{tmp}/m.json"], ["--shots", "positive integer", "'nan'"]),
        (["download", "dtd", "--timeout", "inf", "--root", "{tmp}/data"], ["--timeout", "finite", "'inf'"]),
        (["validate", "--params", "{nan_params}", "--out", "{tmp}/m.json"], ["train.lr", "finite number, got nan"]),
        (
            [
                "train",
                "--protocol",
                "base2novel",
                "--method",
                "coop",
                "--seed",
                "1",
                "2",
                "--manifest",
                "{manifest}",
                "--train-cache",
                "{train_cache}",
                "--out",
                "{tmp}/run",
            ],
            ["--seed", "--manifest", "one value per packed run"],
        ),
    ],
)
def test_a_bad_value_in_a_real_process_exits_2_with_one_line(work, tmp_path, argv, words):
    argv = [a.format(**work, tmp=tmp_path) for a in argv]
    result = subprocess.run(
        [sys.executable, "-m", "prompt_ot", *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "PROMPT_OT_FORKSERVER"},
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    for word in words:
        assert word in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_cuda_device_this_machine_lacks_is_named(monkeypatch):
    """The GPU side of the --device check, on any machine: a device index past the last GPU is refused."""
    import torch

    from prompt_ot.errors import UserError
    from prompt_ot.utils.args import check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    check_device("cuda:1")
    check_device("cuda")
    with pytest.raises(UserError, match=r"--device cuda:2: this machine has 2 CUDA device\(s\), cuda:0 to cuda:1"):
        check_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="--device cuda: no CUDA device on this machine; use --device cpu or auto"):
        check_device("cuda")
