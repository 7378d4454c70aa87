"""Bad input through the real CLI: one clear message on stderr naming what is wrong and what to do, a
non-zero exit, no traceback, and nothing already computed lost or replaced by a half-written file.

Most cases call ``prompt_ot.cli.main`` in-process (an unhandled exception would escape it, so "returned an
exit code" also proves "printed no traceback"); a few run ``python -m prompt_ot`` as a subprocess to prove
the same of a real process, including a full disk simulated with RLIMIT_FSIZE.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import json
import os
import resource
import signal
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml
from test_download import LocalServer

from prompt_ot.cli import main
from prompt_ot.data import registry
from prompt_ot.data.download import dataset_is_complete
from prompt_ot.data.registry import dataset_spec
from tests.support.cli import TINY_CPU, argv, manifest_and_cache, train_argv
from tests.support.data import LAYOUTS, archive_folder, make_fixture
from tests.support.params import shrunk_params

ROOT = Path(__file__).resolve().parents[1]
SPLIT_FILE = LAYOUTS["dtd"].split_file


# ------------------------------------------------------------------ helpers


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run the CLI in-process; an exception escaping ``main`` (a traceback) fails the test right here."""
    capsys.readouterr()
    rc = main([str(a) for a in args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def assert_one_clear_error(rc: int, err: str, *words: str) -> str:
    """Non-zero exit, no traceback, exactly one ``error:`` line, and that line contains every word."""
    assert rc != 0, f"exit code {rc} for a failing command; stderr: {err}"
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, f"expected one error line, got: {err!r}"
    for word in words:
        assert word in errors[0], f"{word!r} missing from: {errors[0]}"
    return errors[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def jpeg_bytes(size: int = 48) -> bytes:
    import numpy as np
    from PIL import Image

    pixels = (np.random.default_rng(0).random((size, size, 3)) * 255).astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """dtd fixture data, a manifest, a train cache and one finished coop run, all made through the CLI."""
    base = tmp_path_factory.mktemp("cli_errors")
    root = base / "data"
    make_fixture("dtd", root, num_classes=4, per_split=(4, 1, 2))
    params = base / "params.yaml"
    params.write_text(yaml.safe_dump(shrunk_params("paper")))
    manifest, cache, run = base / "manifest.json", base / "train_cache", base / "runs" / "coop"
    manifest_and_cache(root, manifest, cache, epochs=2)
    work = {"base": base, "root": root, "params": params, "manifest": manifest, "cache": cache, "run": run}
    assert main(train_args(work, "coop", run)) == 0
    assert {"checkpoint.safetensors", "prompts.safetensors", "train.json"} <= set(os.listdir(run))
    return work


def train_args(work, method: str, out: Path, params: Path | None = None) -> list[str]:
    return train_argv(params or work["params"], method, work["manifest"], work["cache"], out)


# ------------------------------------------------------------------ params.yaml


BAD_PARAMS = {
    "wrong type": (lambda p: p["train"].update(epochs="ten"), ["train.epochs", "'ten'", "wrong type", "integer"]),
    "zero epochs": (lambda p: p["train"].update(epochs=0), ["train.epochs", "0", "minimum of 1"]),
    "zero batch": (lambda p: p["train"].update(batch_size=0), ["train.batch_size", "minimum of 1"]),
    "negative shots": (
        lambda p: p["protocols"]["base2novel"].update(shots=-1),
        ["protocols.base2novel.shots", "-1", "minimum of 1"],
    ),
    "unknown key": (
        lambda p: p["train"].update(learning_rate=0.1),
        ["unknown key 'learning_rate'", "allowed keys", "lr"],
    ),
    "unknown method": (
        lambda p: p["methods"].append("coprompt"),
        ["methods[11]", "'coprompt'", "not a known method", "coop"],
    ),
    "unknown dataset": (
        lambda p: p["datasets"].append("mnist"),
        ["datasets[1]", "'mnist'", "not a known dataset", "dtd"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_PARAMS))
def test_bad_params_stop_train_with_one_message_and_touch_nothing(work, capsys, tmp_path, case):
    change, words = BAD_PARAMS[case]
    params = shrunk_params("paper")
    change(params)
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(params))
    out = tmp_path / "run"
    before = snapshot(work["run"])
    rc, _, err = cli(capsys, *train_args(work, "coop", out, bad))
    line = assert_one_clear_error(rc, err, str(bad), *words)
    assert rc == 2, line
    assert not out.exists(), "a refused run must not create its folder"
    # and the same file pointed at a finished run folder leaves it byte-identical
    rc, _, err = cli(capsys, *train_args(work, "coop", work["run"], bad))
    assert_one_clear_error(rc, err, *words)
    assert snapshot(work["run"]) == before


def test_bad_params_in_a_real_process_exit_2_without_traceback(work, tmp_path):
    params = shrunk_params("paper")
    params["train"]["epochs"] = 0
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(params))
    result = subprocess.run(
        [sys.executable, "-m", "prompt_ot", "backbone", "--params", str(bad), "--out", str(tmp_path / "backbone")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]  # one line
    assert "train.epochs = 0" in result.stderr and "minimum of 1" in result.stderr
    assert not (tmp_path / "backbone").exists()


def test_unknown_method_name_on_the_command_line(work, capsys, tmp_path):
    rc, _, err = cli(capsys, *train_args(work, "coprompt", tmp_path / "run"))
    assert_one_clear_error(rc, err, "unknown method 'coprompt'", "known methods", "prompt_ot")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "args, words",
    [
        (["split", "mnist", "--out", "{tmp}/m.json"], ["unknown dataset 'mnist'", "known datasets", "dtd"]),
        (["split", "dtd", "--shots", "0", "--out", "{tmp}/m.json"], ["shots", "positive integer", "0"]),
        (["split", "dtd", "--shots", "-1", "--out", "{tmp}/m.json"], ["shots", "positive integer", "-1"]),
        (["split", "dtd", "--seed", "-3", "--out", "{tmp}/m.json"], ["seed", "non-negative", "-3"]),
        (["split", "dtd", "--subset", "half", "--out", "{tmp}/m.json"], ["unknown subset 'half'", "base", "novel"]),
        (["cache", "test", "mnist", "--backbone", "tiny-vit", "--out", "{tmp}/c"], ["unknown dataset 'mnist'"]),
        (
            ["cache", "test", "dtd", "--backbone", "vit-huge-typo", "--out", "{tmp}/c", "--device", "cpu"],
            ["unknown backbone 'vit-huge-typo'", "tiny-vit"],
        ),
        (
            ["cache", "test", "dtd", "--backbone", "tiny-vit", "--batch-size", "0", "--out", "{tmp}/c"],
            ["batch_size", "positive integer", "0"],
        ),
        (
            "cache train --manifest {manifest} --backbone tiny-vit --epochs -1 --seed 1 --out {tmp}/c".split(),
            ["epochs", "non-negative integer", "-1"],
        ),
        (
            ["cache", "train", "--manifest", "{manifest}", "--backbone", "tiny-vit", "--seed", "1", "--out", "{tmp}/c"],
            ["--epochs", "--params"],
        ),
        (
            "cache train --manifest {manifest} --backbone tiny-vit --epochs 2 --seed -1 --out {tmp}/c".split(),
            ["seed", "non-negative", "-1"],
        ),
    ],
)
def test_bad_names_and_counts_on_split_and_cache(work, capsys, tmp_path, args, words):
    args = [a.format(tmp=tmp_path, manifest=work["manifest"]) for a in args] + ["--root", str(work["root"])]
    rc, _, err = cli(capsys, *args)
    assert_one_clear_error(rc, err, *words)
    assert rc == 2
    assert not (tmp_path / "m.json").exists() and not (tmp_path / "c").exists()


# ------------------------------------------------------------------ dataset files


@pytest.fixture
def dtd(tmp_path):
    root = tmp_path / "data"
    split = make_fixture("dtd", root, num_classes=4, per_split=(4, 1, 2))
    return root, split, root / LAYOUTS["dtd"].folder / SPLIT_FILE


def test_missing_dataset_folder_says_how_to_get_it(capsys, tmp_path):
    rc, _, err = cli(capsys, "split", "dtd", "--root", tmp_path / "nowhere", "--out", tmp_path / "m.json")
    assert_one_clear_error(
        rc, err, str(tmp_path / "nowhere" / "dtd"), "does not exist", "python -m prompt_ot download dtd", "--root"
    )
    assert not (tmp_path / "m.json").exists()


def test_split_file_that_is_not_json(dtd, capsys, tmp_path):
    root, _, split_file = dtd
    split_file.write_text('{"train": [["banded/banded_1.jpg", 0, "banded"],')  # cut off
    for args in (
        ["split", "dtd", "--out", tmp_path / "m.json"],
        ["cache", "test", "dtd", "--backbone", "tiny-vit", "--out", tmp_path / "c", "--device", "cpu"],
    ):
        rc, _, err = cli(capsys, *args, "--root", root)
        assert_one_clear_error(rc, err, str(split_file), "not valid JSON", "download it again")
    assert not (tmp_path / "m.json").exists() and not (tmp_path / "c").exists()


def test_split_file_naming_missing_images(dtd, capsys, tmp_path):
    root, split, split_file = dtd
    raw = json.loads(split_file.read_text())
    raw["train"].append(["banded/not_there.jpg", 0, "banded"])
    raw["test"].append(["banded/not_there_either.jpg", 0, "banded"])
    split_file.write_text(json.dumps(raw))
    rc, _, err = cli(capsys, "split", "dtd", "--root", root, "--shots", "16", "--out", tmp_path / "m.json")
    assert_one_clear_error(rc, err, "banded/not_there.jpg", "does not exist", "download the dataset again")
    rc, _, err = cli(
        capsys, *argv("cache", "test", "dtd", root=root, backbone="tiny-vit", out=tmp_path / "c", device="cpu")
    )
    assert_one_clear_error(rc, err, "banded/not_there_either.jpg", "does not exist", "download the dataset again")
    assert not (tmp_path / "m.json").exists() and not (tmp_path / "c").exists()


def test_truncated_jpeg_stops_the_cache_build_and_keeps_the_old_cache(dtd, capsys, tmp_path):
    root, split, _ = dtd
    image_root = dataset_spec("dtd").image_root(root)
    out = tmp_path / "cache"
    args = ["cache", "test", "dtd", "--root", root, "--backbone", "tiny-vit", "--out", out, "--device", "cpu"]
    assert cli(capsys, *args)[0] == 0
    before = snapshot(out)
    victim = image_root / split["test"][0].relpath
    data = jpeg_bytes()
    victim.write_bytes(data[: len(data) // 2])  # a JPEG cut in half: same name, another size -> a rebuild
    rc, _, err = cli(capsys, *args, "--replace")
    assert_one_clear_error(rc, err, str(victim), "cannot be decoded", "truncated", "skip")
    assert snapshot(out) == before, "the complete cache was changed by a failed build"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "data"], "a half-built folder was left behind"
    # the advertised way out works: --skip-bad leaves the image out
    rc, _, err = cli(capsys, *args, "--replace", "--skip-bad")
    assert rc == 0, err
    assert snapshot(out) != before


# ------------------------------------------------------------------ checkpoints


def test_checkpoint_of_another_method_is_refused_and_kept(work, capsys):
    before = snapshot(work["run"])
    rc, _, err = cli(capsys, *train_args(work, "ivlp", work["run"]))
    assert_one_clear_error(
        rc, err, "checkpoint", str(work["run"] / "checkpoint.safetensors"), "another run", "another output folder"
    )
    after = snapshot(work["run"])
    for name in ("checkpoint.safetensors", "prompts.safetensors", "train.json"):
        assert after[name] == before[name], f"{name} was changed by a refused run"
    assert after["train.log"].startswith(before["train.log"])  # the log only grows
    assert set(after) == set(before)


def test_refused_run_keeps_the_finished_runs_mlflow_record(work, capsys):
    before = (work["run"] / "mlflow_pending_train.json").read_bytes()
    rc, _, err = cli(capsys, *train_args(work, "ivlp", work["run"]))
    assert rc == 2 and "another run" in err
    assert (work["run"] / "mlflow_pending_train.json").read_bytes() == before


def test_checkpoint_of_another_backbone_is_refused_and_kept(work, capsys, tmp_path):
    """Same architecture name, other weights (a local checkpoint file): the run's fingerprint differs."""
    from safetensors.torch import save_file

    from prompt_ot.models.backbone import load_backbone

    clip, _, _ = load_backbone("tiny-vit")
    weights = tmp_path / "tiny-vit-other.safetensors"
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(weights))
    params = shrunk_params("paper")
    params["backbone"]["pretrained"] = str(weights)
    other = tmp_path / "params.yaml"
    other.write_text(yaml.safe_dump(params))
    before = snapshot(work["run"])
    rc, _, err = cli(capsys, *train_args(work, "coop", work["run"], other))
    assert_one_clear_error(rc, err, "checkpoint", "belongs to another run", "backbone")
    after = snapshot(work["run"])
    for name in ("checkpoint.safetensors", "prompts.safetensors", "train.json"):
        assert after[name] == before[name], f"{name} was changed by a refused run"


def test_damaged_checkpoint_is_refused_not_deleted(work, capsys, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    junk = b"\x80\x04not a safetensors file"
    (run / "checkpoint.safetensors").write_bytes(junk)
    rc, _, err = cli(capsys, *train_args(work, "coop", run))
    assert_one_clear_error(rc, err, str(run / "checkpoint.safetensors"), "damaged", "delete it")
    assert (run / "checkpoint.safetensors").read_bytes() == junk
    assert not (run / "prompts.safetensors").exists()


# ------------------------------------------------------------------ full disk


def test_full_disk_while_writing_prompts_keeps_the_finished_run(work, capsys, monkeypatch):
    """The disk fills while the prompts file is written: half of it lands in the temporary file, then ENOSPC."""
    import safetensors.torch

    real_save = safetensors.torch.save_file
    tmp_files: list[str] = []

    def save_until_full(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 2])
        tmp_files.append(filename)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(safetensors.torch, "save_file", save_until_full)
    before = snapshot(work["run"])
    rc, _, err = cli(capsys, *train_args(work, "coop", work["run"]))
    assert tmp_files, "the simulated fault never triggered"
    line = assert_one_clear_error(
        rc,
        err,
        "no space left on device",
        f"while writing {work['run']}",
        "free space",
        "rerun",
        "completed outputs are kept",
    )
    assert rc == 1, line
    after = snapshot(work["run"])
    for name in ("checkpoint.safetensors", "prompts.safetensors", "train.json"):
        assert after[name] == before[name], f"{name} was damaged by the failed write"
    assert not any(Path(f).exists() for f in tmp_files), "a half-written temporary file was left behind"
    assert {n for n in after if n.endswith(".tmp")} == set()


def _limit_file_size(limit: int):
    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit then fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


def test_full_disk_in_a_real_process_keeps_earlier_manifests(dtd, tmp_path):
    root, _, _ = dtd
    out_dir = tmp_path / "manifests"
    base = [sys.executable, "-m", "prompt_ot", "split", "dtd", "--root", str(root), "--shots", "4"]
    first = subprocess.run(
        base + ["--seed", "1", "--out", str(out_dir / "seed1.json")], capture_output=True, text=True, cwd=ROOT
    )
    assert first.returncode == 0, first.stderr
    size = (out_dir / "seed1.json").stat().st_size
    earlier = snapshot(out_dir)
    target = out_dir / "seed2.json"
    result = subprocess.run(
        base + ["--seed", "2", "--out", str(target)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        preexec_fn=_limit_file_size(size // 2),
    )
    assert_one_clear_error(
        result.returncode,
        result.stderr,
        "no space left on device",
        f"while writing {target}",
        "free space",
        "completed outputs are kept",
    )
    assert result.returncode == 1
    assert not target.exists(), "a partial manifest appeared under its final name"
    assert snapshot(out_dir) == earlier, "an earlier manifest was changed, or a temporary file was left behind"


def test_unrelated_os_errors_still_show_their_traceback(monkeypatch, capsys, tmp_path):
    """Only a full disk is turned into a message: other failures are bugs and keep their traceback."""
    import prompt_ot.commands.split as split_cmd

    def boom(args):
        raise OSError(errno.EACCES, "Permission denied", str(tmp_path / "x"))

    monkeypatch.setattr(split_cmd, "run", boom)
    with pytest.raises(PermissionError):
        main(["split", "dtd", "--out", str(tmp_path / "m.json")])


# ------------------------------------------------------------------ downloads


def _eurosat_source(tmp_path: Path) -> tuple[bytes, bytes]:
    staging = tmp_path / "staging"
    make_fixture("eurosat", staging, num_classes=10)
    archive = archive_folder(staging / "eurosat" / "2750", tmp_path / "EuroSAT.zip", prefix="2750/")
    return archive.read_bytes(), (staging / "eurosat" / "split_zhou_EuroSAT.json").read_bytes()


@pytest.fixture
def server():
    srv = LocalServer()
    yield srv
    srv.close()


def _serve(server, monkeypatch, archive: bytes, split: bytes, sha256: str | None):
    server.files["/EuroSAT.zip"], server.files["/split.json"] = archive, split
    real = dataset_spec("eurosat")
    recipe = dataclasses.replace(
        real,
        sources=(
            dataclasses.replace(real.sources[0], url=server.url("/EuroSAT.zip"), mirrors=(), sha256=sha256),
            dataclasses.replace(real.sources[1], url=server.url("/split.json"), mirrors=()),
        ),
    )
    monkeypatch.setitem(registry._load_registry(), "eurosat", recipe)
    return recipe


def test_download_with_a_wrong_checksum_is_refused(server, monkeypatch, capsys, tmp_path):
    archive, split = _eurosat_source(tmp_path)
    pinned = hashlib.sha256(archive).hexdigest()
    tampered = archive[:-1] + bytes([archive[-1] ^ 0xFF])
    recipe = _serve(server, monkeypatch, tampered, split, pinned)
    root = tmp_path / "data"
    make_fixture("dtd", root, num_classes=3)  # an earlier, complete dataset in the same root
    earlier = snapshot(root / "dtd")
    stamp = tmp_path / "stamps" / "eurosat.json"
    rc, _, err = cli(capsys, "download", "eurosat", "--root", root, "--retries", "1", "--stamp", stamp)
    assert_one_clear_error(rc, err, "EuroSAT.zip", "sha256", pinned, "differs", "--no-verify")
    assert rc == 2
    folder = recipe.dataset_dir(root)
    assert not dataset_is_complete(recipe, root) and not stamp.exists()
    assert not (folder / "2750").exists(), "a file that failed its checksum was unpacked"
    assert not [p for p in folder.rglob("EuroSAT.zip*") if p.is_file()], "the bad download was kept"
    assert snapshot(root / "dtd") == earlier
    # once the server has the right bytes, the same command completes
    server.files["/EuroSAT.zip"] = archive
    rc, _, err = cli(capsys, "download", "eurosat", "--root", root, "--retries", "1", "--stamp", stamp)
    assert rc == 0, err
    assert dataset_is_complete(recipe, root) and stamp.is_file()


def _escaping_archive(kind: str, tmp_path: Path) -> bytes:
    buffer = io.BytesIO()
    if kind == "zip-dotdot":
        with zipfile.ZipFile(buffer, "w") as zf:
            zf.writestr("2750/AnnualCrop/fine.jpg", b"x")
            zf.writestr("2750/../../../escaped.txt", b"x")
    elif kind == "zip-absolute":
        with zipfile.ZipFile(buffer, "w") as zf:
            zf.writestr(str(tmp_path / "escaped.txt"), b"x")
    else:
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            if kind == "tar-symlink":  # a link to the outside, then a file written through it
                link = tarfile.TarInfo("2750/out")
                link.type, link.linkname = tarfile.SYMTYPE, str(tmp_path)
                tar.addfile(link)
                name = "2750/out/escaped.txt"
            elif kind == "tar-absolute":
                name = str(tmp_path / "escaped.txt")
            else:
                name = "2750/../../escaped.txt"
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["zip-dotdot", "zip-absolute", "tar-dotdot", "tar-absolute", "tar-symlink"])
def test_downloaded_archive_with_an_escaping_member_is_refused(server, monkeypatch, capsys, tmp_path, kind):
    data = _escaping_archive(kind, tmp_path)
    recipe = _serve(server, monkeypatch, data, b"{}", hashlib.sha256(data).hexdigest())
    root = tmp_path / "data"
    outside_before = sorted(p.name for p in tmp_path.iterdir())
    rc, _, err = cli(capsys, "download", "eurosat", "--root", root, "--retries", "1")
    assert_one_clear_error(rc, err, "refusing to unpack", "EuroSAT.zip", "delete")
    assert not (tmp_path / "escaped.txt").exists() and not list(root.rglob("escaped.txt"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(outside_before + ["data"])
    assert not dataset_is_complete(recipe, root)


def test_check_resumable_refuses_a_foreign_checkpoint_from_its_header(work, tmp_path):
    """The check the train command makes before it opens anything in the run folder."""
    from prompt_ot.checkpoint import check_resumable
    from prompt_ot.config import load_params, resolve_run, train_config
    from prompt_ot.data.fewshot import read_manifest
    from prompt_ot.errors import UserError
    from prompt_ot.train import run_fingerprint

    params = load_params(work["params"])
    classes = read_manifest(work["manifest"]).classnames
    ckpt = work["run"] / "checkpoint.safetensors"

    def fingerprint(method):
        resolved, recipe = resolve_run(params, method, "base2novel", "dtd", 2)
        return run_fingerprint(resolved, train_config(params, recipe, 1, "cpu"), classes, "tiny-vit:none")

    before = ckpt.read_bytes()
    check_resumable(ckpt, fingerprint("coop"))  # its own run: fine
    check_resumable(tmp_path / "none.safetensors", fingerprint("ivlp"))  # no checkpoint: a fresh run
    with pytest.raises(UserError, match="belongs to another run"):
        check_resumable(ckpt, fingerprint("ivlp"))
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(UserError, match="damaged"):
        check_resumable(tmp_path / "junk.safetensors", fingerprint("coop"))
    assert ckpt.read_bytes() == before


def test_evaluate_refuses_prompts_of_another_run_naming_both(work, capsys, tmp_path):
    """The released recipe end to end (Prompt-OT in fp16, as released): its prompts carry their provenance into the
    metrics file, and an evaluation asked to label another run is refused, naming both, with nothing written."""
    from prompt_ot.cache import TestFeatures
    from prompt_ot.checkpoint import load_prompts, save_prompts

    raw = shrunk_params("paper")
    del raw["train"]["precision"]
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    rc, out, err = cli(capsys, *train_args(work, "prompt_ot", run, params))
    assert rc == 0, err
    summary = json.loads((run / "train.json").read_text())
    recipe = summary["recipe"]
    assert (recipe["name"], recipe["precision"], recipe["lr"], recipe["batch_size"]) == ("released", "fp16", 0.005, 4)
    assert recipe["overridden"] == ["epochs", "eval_epoch"] and "released" in (run / "train.log").read_text()
    assert summary["frozen_image_features"] == "computed while training"  # the shared cache holds fp32 views
    assert summary["provenance"]["sampler"] == "dassl" and len(summary["provenance"]["manifest_sha256"]) == 64
    tests = tmp_path / "test"
    assert main(argv("cache", "test", "dtd", params=params, root=work["root"], out=tests / "dtd", **TINY_CPU)) == 0
    assert TestFeatures(tests / "dtd").precision == "fp16"  # every run of the grid evaluates in fp16
    prompts = run / "prompts.safetensors"

    def evaluate(params_file=params, prompts_file=prompts, **changes):
        values = {"method": "prompt_ot", "dataset": "dtd", "shots": "2", "seed": "1"} | changes
        paths = {"prompts": prompts_file, "test_cache_root": tests, "out": tmp_path / "metrics.json"}
        return cli(
            capsys, *argv("evaluate", params=params_file, protocol="base2novel", **paths, device="cpu", **values)
        )

    rc, _, err = evaluate()
    assert rc == 0, err
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["provenance"] == summary["provenance"]
    assert (metrics["recipe"], metrics["precision"], metrics["epoch"], metrics["epochs"]) == ("released", "fp16", 2, 2)
    (tmp_path / "metrics.json").unlink()
    (tmp_path / "predictions.npz").unlink()
    for change, have, want in [
        ({"seed": "2"}, "seed 1", "seed 2"),
        ({"shots": "4"}, "shots 2", "shots 4"),
        ({"method": "ivlp"}, "method 'prompt_ot'", "method 'ivlp'"),
        ({"dataset": "eurosat"}, "dataset 'dtd'", "dataset 'eurosat'"),
    ]:
        rc, _, err = evaluate(**change)
        assert_one_clear_error(rc, err, str(prompts), have, want, "asked to label")
    shared = tmp_path / "shared.yaml"
    shared.write_text(yaml.safe_dump(raw | {"recipe": "shared"}))
    rc, _, err = evaluate(params_file=shared)
    assert_one_clear_error(rc, err, "recipe 'released'", "recipe 'shared'")
    tensors, meta = load_prompts(prompts)
    old = tmp_path / "old.safetensors"
    save_prompts(old, tensors, {k: v for k, v in meta.items() if k != "provenance"})
    rc, _, err = evaluate(prompts_file=old)
    assert_one_clear_error(rc, err, "holds no provenance record", "train the run again")
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "predictions.npz").exists()


# ------------------------------------------------------------------ NaN and infinity in params.yaml


SHIPPED_PARAMS = [ROOT / "params.yaml", ROOT / "demo" / "params.yaml"]


def _numeric_leaves(value, path=()):
    """The path of every number in a loaded params file (booleans are not numbers here), lists included."""
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        yield path
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _numeric_leaves(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _numeric_leaves(item, (*path, i))


def _key_text(path) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def _set(raw: dict, path, value) -> None:
    for part in path[:-1]:
        raw = raw[part]
    raw[path[-1]] = value


NUMERIC_LEAVES = [(f, path) for f in SHIPPED_PARAMS for path in _numeric_leaves(yaml.safe_load(f.read_text()))]


def test_the_shipped_params_have_numbers_to_break_and_are_valid():
    from prompt_ot.config import load_params

    for f in SHIPPED_PARAMS:
        load_params(f)
        leaves = [p for g, p in NUMERIC_LEAVES if g == f]
        assert len(leaves) >= 10, leaves
        assert any(isinstance(p[-1], int) for p in leaves), "no number inside a list was found"


@pytest.mark.parametrize(
    "file, path", NUMERIC_LEAVES, ids=[f"{f.parent.name}/{f.name}:{'.'.join(map(str, p))}" for f, p in NUMERIC_LEAVES]
)
def test_nan_and_infinity_are_refused_for_every_number_of_the_shipped_params(tmp_path, file, path):
    """Every number of params.yaml and demo/params.yaml set to .nan, .inf and -.inf (as YAML spells them, written to
    a file and loaded the way every stage loads it) is refused with one message naming the key."""
    from prompt_ot.config import load_params
    from prompt_ot.errors import UserError

    for bad in (float("nan"), float("inf"), float("-inf")):
        raw = yaml.safe_load(file.read_text())
        _set(raw, path, bad)
        bad_file = tmp_path / "params.yaml"
        bad_file.write_text(yaml.safe_dump(raw))
        assert {"nan": ".nan", "inf": ".inf", "-inf": "-.inf"}[str(bad)] in bad_file.read_text()
        with pytest.raises(UserError) as refused:
            load_params(bad_file)
        assert str(refused.value) == f"{bad_file}: {_key_text(path)}: must be a finite number, got {bad}"


def test_nan_in_a_free_form_block_and_through_the_cli(capsys, tmp_path):
    """A variant's regulariser block has no schema of its own: the finite rule covers it all the same."""
    params = shrunk_params("paper")
    params["variants"] = {"prompt_ot_nan": {"method": "prompt_ot", "regulariser": {"weight": float("nan")}}}
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(params))
    rc, _, err = cli(capsys, "validate", "--params", bad, "--out", tmp_path / "valid.json")
    assert_one_clear_error(rc, err, str(bad), "variants.prompt_ot_nan.regulariser.weight", "finite number", "nan")
    assert rc == 2 and not (tmp_path / "valid.json").exists()


def test_params_are_parsed_by_libyaml_into_pyyamls_objects_and_refused_with_pyyamls_message(tmp_path, monkeypatch):
    """safe_load_yaml (params.yaml in every job) gives exactly yaml.safe_load's objects for the project's YAML files,
    through libyaml's parser where PyYAML has it; a broken file is refused with PyYAML's message, which quotes the
    offending line."""
    from prompt_ot.config import load_params
    from prompt_ot.errors import UserError
    from prompt_ot.utils.io import safe_load_yaml

    files = [ROOT / "params.yaml", ROOT / "demo" / "params.yaml", ROOT / "dvc.yaml", ROOT / "demo" / "dvc.yaml"]
    files += sorted((ROOT / "workflow" / "profiles").glob("*/*.yaml"))
    assert len(files) > 5
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert safe_load_yaml(text) == yaml.safe_load(text), path
    loaders, load = [], yaml.load
    monkeypatch.setattr(yaml, "load", lambda text, Loader: loaders.append(Loader) or load(text, Loader=Loader))
    assert safe_load_yaml("train: {epochs: 5}") == {"train": {"epochs": 5}}
    assert loaders == ([yaml.CSafeLoader] if getattr(yaml, "CSafeLoader", None) else [])
    monkeypatch.undo()
    broken = tmp_path / "params.yaml"
    broken.write_text("train:\n  epochs: [1, 2\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"params.yaml is not valid YAML: .*epochs: \[1, 2 \^"):
        load_params(broken)
