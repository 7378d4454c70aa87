"""Safety: checkpoints are loaded without running code, archives cannot write outside their folder (see also
tests/test_download.py), and dataset and method names reach shell commands only after validation."""

from __future__ import annotations

import ast
import io
import os
import pickle
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml

from prompt_ot.cli import main
from prompt_ot.config import validate_params
from prompt_ot.data.download import extract_archive
from prompt_ot.errors import UserError
from tests.support.cli import argv, train_argv
from tests.support.data import make_fixture
from tests.support.workflow import ROOT, make_workspace, quiet_env

PACKAGE = ROOT / "prompt_ot"


# ------------------------------------------------------------------ checkpoints


def _torch_load_calls(source: str) -> list[ast.Call]:
    """Calls of ``torch.load(...)`` or of a bare ``load`` imported from torch."""
    tree = ast.parse(source)
    from_torch = {
        a.asname or a.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "torch"
        for a in node.names
        if a.name == "load"
    }
    calls = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if (
            isinstance(f, ast.Attribute)
            and f.attr == "load"
            and isinstance(f.value, ast.Name)
            and f.value.id == "torch"
        ) or (isinstance(f, ast.Name) and f.id in from_torch):
            calls.append(node)
    return calls


def test_the_torch_load_finder_sees_unsafe_calls():
    calls = _torch_load_calls("import torch\nfrom torch import load as L\ntorch.load(p)\nL(p, weights_only=False)\n")
    assert len(calls) == 2


def test_every_torch_load_in_the_package_is_weights_only():
    unsafe = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text()
        assert "pickle.load" not in source and "pickle.loads" not in source, f"{path} unpickles data"
        for call in _torch_load_calls(source):
            flag = {k.arg: k.value for k in call.keywords}.get("weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                unsafe.append(f"{path.relative_to(ROOT)}:{call.lineno}")
    assert not unsafe, f"torch.load without weights_only=True: {unsafe}"


def test_open_clip_loads_local_checkpoints_weights_only():
    """A local ``backbone.pretrained`` file goes through open_clip's loader: it must default to weights_only."""
    import inspect

    from open_clip import factory

    assert inspect.signature(factory.load_checkpoint).parameters["weights_only"].default is True
    assert inspect.signature(factory.load_state_dict).parameters["weights_only"].default is True


class _RunsCode:
    """Unpickling this creates ``marker``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _malicious_checkpoints(tmp_path: Path) -> dict[str, Path]:
    import torch

    marker = tmp_path / "PWNED"
    files = {"torch.save": tmp_path / "evil.pt", "plain pickle": tmp_path / "evil.bin"}
    torch.save({"state_dict": {"w": _RunsCode(marker)}}, files["torch.save"])
    files["plain pickle"].write_bytes(pickle.dumps({"w": _RunsCode(marker)}))
    return files


def _cache_test_args(root: Path, pretrained: Path, out: Path) -> list[str]:
    return argv("cache", "test", "dtd", root=root, backbone="tiny-vit", pretrained=pretrained, out=out, device="cpu")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_code_running_backbone_checkpoint_is_refused_without_running_it(tmp_path, capsys):
    root = tmp_path / "data"
    make_fixture("dtd", root, num_classes=2, per_split=(1, 1, 1))
    for kind, path in _malicious_checkpoints(tmp_path).items():
        try:
            rc = main(_cache_test_args(root, path, tmp_path / "cache"))
        except Exception:  # refused, though not yet with a clear message (see the next test)
            rc = None
        assert rc != 0, kind
        assert not (tmp_path / "PWNED").exists(), f"loading a {kind} checkpoint ran its code"
        assert not (tmp_path / "cache").exists()


def test_a_code_running_backbone_checkpoint_gets_a_clear_message(tmp_path, capsys):
    root = tmp_path / "data"
    make_fixture("dtd", root, num_classes=2, per_split=(1, 1, 1))
    path = _malicious_checkpoints(tmp_path)["torch.save"]
    rc = main(_cache_test_args(root, path, tmp_path / "cache"))
    err = capsys.readouterr().err
    assert rc == 2 and str(path) in err and "Traceback" not in err
    assert not (tmp_path / "PWNED").exists()


def test_a_training_checkpoint_that_is_a_pickle_is_refused_without_running_it(tmp_path):
    """Training checkpoints are safetensors: a pickle under that name is rejected as damaged, never unpickled."""
    import torch

    from prompt_ot.checkpoint import load_checkpoint, load_prompts

    marker = tmp_path / "PWNED"
    path = tmp_path / "checkpoint.safetensors"
    torch.save({"w": _RunsCode(marker)}, path)
    with pytest.raises(UserError, match="damaged"):
        load_checkpoint(path, None, None, "fingerprint")
    with pytest.raises(UserError, match="damaged or not a safetensors file"):
        load_prompts(path)
    assert not marker.exists()
    assert path.is_file(), "the refused file was deleted"


# ------------------------------------------------------------------ archives (beyond tests/test_download.py)


def _outside(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir() if p.name not in {"dest", "a.zip", "a.tar", "victim"})


@pytest.mark.parametrize("name", ["ok/../../evil.txt", "./../evil.txt", "ok/./../../evil.txt"])
def test_zip_dotdot_inside_a_path_is_refused(tmp_path, name):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok/first.txt", b"x")
        zf.writestr(name, b"x")
    with pytest.raises(UserError, match="refusing to unpack a.zip"):
        extract_archive(archive, tmp_path / "dest")
    assert _outside(tmp_path) == []
    assert not (tmp_path / "dest" / "ok" / "first.txt").exists()  # zip: nothing written before the check


def test_tar_symlink_to_a_file_outside_cannot_be_written_through(tmp_path):
    """A link that names an outside file, then a regular member of the same name: the outside file stays."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tar:
        link = tarfile.TarInfo("data.txt")
        link.type, link.linkname = tarfile.SYMTYPE, str(victim)
        tar.addfile(link)
        info = tarfile.TarInfo("data.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    with pytest.raises(UserError, match="refusing to unpack a.tar"):
        extract_archive(archive, tmp_path / "dest")
    assert victim.read_bytes() == b"precious"
    assert _outside(tmp_path) == []


def test_an_existing_link_in_the_target_folder_cannot_lead_out(tmp_path):
    """The target folder already holds a link to the outside (an earlier run, a user): members through it are
    refused."""
    dest = tmp_path / "dest"
    dest.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (dest / "sub").symlink_to(tmp_path / "elsewhere")
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("sub/evil.txt", b"x")
    with pytest.raises(UserError, match="refusing to unpack a.zip"):
        extract_archive(archive, dest)
    assert list((tmp_path / "elsewhere").iterdir()) == []


# ------------------------------------------------------------------ names reaching the shell


INJECTIONS = ["foo; touch PWNED", "$(touch PWNED)", "`touch PWNED`", "x && touch PWNED"]


def _params_with(where: str, name: str) -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["protocols"] = {
        "base2novel": {"datasets": [], "shots": 2},
        "cross_dataset": {"sources": [], "shots": 2, "evaluate": {"targets": []}},
        "domain_generalization": {"sources": [], "evaluate": {"targets": []}},
        "few_shot": {"datasets": [], "shots": [], "methods": []},
    }
    params["datasets"] = ["dtd"]
    if where == "dataset":
        params["datasets"] = [name]
    elif where == "method":
        params["methods"] = [name]
    else:  # a variant whose name is the injection
        params["variants"] = {name: {"method": "coop"}}
        params["methods"] = [name]
    return params


@pytest.mark.parametrize("where", ["dataset", "method", "variant"])
@pytest.mark.parametrize("name", INJECTIONS)
def test_validation_rejects_names_that_are_not_plain_identifiers(where, name):
    with pytest.raises(UserError, match="not a valid name|not a known"):
        validate_params(_params_with(where, name))


@pytest.mark.parametrize("name", INJECTIONS[:2])
def test_cli_rejects_injected_names_before_doing_anything(tmp_path, capsys, name):
    (tmp_path / "PWNED").unlink(missing_ok=True)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main(["split", name, "--root", "data", "--out", "m.json"]) == 2
        assert f"unknown dataset {name!r}" in capsys.readouterr().err
        assert main(["download", name, "--root", "data"]) == 2
        assert f"unknown dataset {name!r}" in capsys.readouterr().err
        assert main(train_argv(ROOT / "params.yaml", name, "m.json", "c", "run", device=None)) == 2
        assert f"unknown method {name!r}" in capsys.readouterr().err
    finally:
        os.chdir(cwd)
    assert sorted(os.listdir(tmp_path)) == []


def _pipeline(tmp_path: Path, where: str, name: str) -> Path:
    folder = make_workspace(tmp_path / "ws", yaml.safe_dump(_params_with(where, name)))
    assert not (folder / "PWNED").exists()
    return folder


def _env() -> dict:
    env = quiet_env()
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


@pytest.mark.parametrize("where, name", [("dataset", "$(touch PWNED)"), ("method", "foo; touch PWNED")])
def test_snakemake_refuses_injected_names_before_any_shell_command(tmp_path, where, name):
    folder = _pipeline(tmp_path, where, name)
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "1"],
        cwd=folder,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert result.returncode != 0
    assert "params.yaml" in result.stderr and repr(name) in result.stderr
    assert not (folder / "PWNED").exists(), "a shell command ran with the injected name"
    assert not (folder / "runs").exists(), "a job ran although params.yaml was invalid"


@pytest.mark.parametrize("where, name", [("dataset", "$(touch PWNED)"), ("method", "x; touch PWNED")])
def test_dvc_refuses_injected_names_before_any_shell_command(tmp_path, where, name):
    """dvc.yaml's first stage validates params.yaml and every other stage depends on it."""
    folder = _pipeline(tmp_path, where, name)
    result = subprocess.run(
        [sys.executable, "-m", "dvc", "repro"], cwd=folder, capture_output=True, text=True, env=_env(), timeout=120
    )
    assert result.returncode != 0
    assert not (folder / "PWNED").exists(), "dvc repro ran a shell command with the injected name"
    output = result.stdout + result.stderr
    assert "prompt_ot validate" in output and repr(name) in output and "is not a valid name" in output, output
    assert not (folder / "runs" / "stamps").exists(), "a stage after validation ran"
