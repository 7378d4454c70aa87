"""The fork server (`python -m prompt_ot forkserver`): a job run through it behaves as its own process would
(exit status, stdout and stderr, outputs: the byte-for-byte comparison of a whole grid is in test_e2e.py);
signals sent to a job reach its child; a job killed outright takes its child with it; without a server the
command runs in its own process."""

import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.support.forkserver import fork_server
from tests.support.workflow import ROOT, quiet_env

pytestmark = pytest.mark.system  # each test starts a fork server


def _prompt_ot(*args, socket_path=None, tmpdir=None, **kw):
    env = quiet_env() | ({"PROMPT_OT_FORKSERVER": str(socket_path)} if socket_path else {})
    env |= {"TMPDIR": str(tmpdir)} if tmpdir else {}  # where the wrapper form makes its server's folder
    return subprocess.Popen(
        [sys.executable, "-m", "prompt_ot", *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def _python(code, *args):
    """The standard output of ``python -c code args`` in a fresh process, which must succeed."""
    done = subprocess.run(
        [sys.executable, "-c", code, *args], env=quiet_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _wait_for(condition, what, seconds=60):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with fork_server(tmp_path_factory.mktemp("fork")) as running:
        yield running


def test_a_job_through_the_server_has_its_own_status_streams_and_folder(server, tmp_path):
    socket_path, children = server
    (tmp_path / "params.yaml").write_text((ROOT / "demo" / "params.yaml").read_text())
    ok = _prompt_ot("validate", "--params", "params.yaml", socket_path=socket_path, cwd=tmp_path)
    out, err = ok.communicate(timeout=60)
    assert ok.returncode == 0 and "params.yaml is valid" in out and err == ""
    bad = _prompt_ot("validate", "--params", "missing.yaml", socket_path=socket_path, cwd=tmp_path)
    out, err = bad.communicate(timeout=60)
    assert bad.returncode == 2 and "error: parameter file missing.yaml does not exist" in err and "Traceback" not in err
    alone = _prompt_ot("validate", "--params", "missing.yaml", cwd=tmp_path)  # the same job as its own process
    assert alone.communicate(timeout=120) == (out, err) and alone.returncode == 2
    assert children() == 0


def test_without_an_answering_server_the_command_runs_in_its_own_process(tmp_path):
    (tmp_path / "params.yaml").write_text((ROOT / "demo" / "params.yaml").read_text())
    job = _prompt_ot("validate", "--params", "params.yaml", socket_path=tmp_path / "nobody.sock", cwd=tmp_path)
    out, err = job.communicate(timeout=120)
    assert job.returncode == 0 and "is valid" in out


def _long_job(socket_path, tmp_path):
    return _prompt_ot(
        "smoke",
        "--method",
        "prompt_ot",
        "--epochs",
        "500",
        "--shots",
        "2",
        "--out",
        tmp_path / "smoke",
        socket_path=socket_path,
        cwd=tmp_path,
    )


def test_sigterm_to_a_job_ends_its_child_and_the_job_dies_by_it(server, tmp_path):
    socket_path, children = server
    job = _long_job(socket_path, tmp_path)
    _wait_for(lambda: children() == 1, "the job's child")
    time.sleep(1.0)
    job.send_signal(signal.SIGTERM)
    job.communicate(timeout=60)
    assert job.returncode == -signal.SIGTERM
    _wait_for(lambda: children() == 0, "the child to end")


def test_a_job_killed_outright_takes_its_child_with_it(server, tmp_path):
    socket_path, children = server
    job = _long_job(socket_path, tmp_path)
    _wait_for(lambda: children() == 1, "the job's child")
    job.kill()  # SIGKILL: the job cannot pass anything on; its closed connection must end the child
    job.communicate(timeout=60)
    _wait_for(lambda: children() == 0, "the orphaned child to be killed")


def test_a_socket_in_a_missing_folder_is_refused(tmp_path):
    job = _prompt_ot("forkserver", "--socket", tmp_path / "no" / "such" / "s.sock")
    out, err = job.communicate(timeout=120)
    assert job.returncode == 2 and "does not exist" in err and "Traceback" not in err


def test_the_wrapper_form_serves_while_its_command_runs_and_then_stops(tmp_path):
    (tmp_path / "params.yaml").write_text((ROOT / "demo" / "params.yaml").read_text())
    job = _prompt_ot(
        "forkserver", "--", sys.executable, "-m", "prompt_ot", "validate", "--params", "params.yaml", cwd=tmp_path
    )
    out, err = job.communicate(timeout=180)
    assert job.returncode == 0 and "is valid" in out
    # this test's servers' folders under a short folder of its own (a UNIX socket path has at most 107 bytes), so that
    # servers of other tests running beside it are not counted
    short = Path(tempfile.mkdtemp(prefix="fs-"))
    try:
        mine = f"forkserver --socket {short}/prompt_ot_fork_"
        # the command sees its server running, and its own exit status (3) is the wrapper's
        job = _prompt_ot(
            "forkserver", "--", "sh", "-c", f"pgrep -f '{mine}' > seen.txt; exit 3", cwd=tmp_path, tmpdir=short
        )
        job.communicate(timeout=180)
        assert job.returncode == 3 and (tmp_path / "seen.txt").read_text().strip()
        leftover = subprocess.run(["pgrep", "-f", mine], capture_output=True, text=True)
    finally:
        shutil.rmtree(short, ignore_errors=True)
    assert leftover.stdout.strip() == "", "a fork server outlived its command"
    missing = _prompt_ot("forkserver", "--", "no-such-command-here", cwd=tmp_path)
    out, err = missing.communicate(timeout=60)
    assert missing.returncode == 2 and "not found on PATH" in err


def test_the_server_imports_every_dataset_recipe_so_a_jobs_registry_imports_nothing():
    """What each job used to import itself (the dataset recipes, about 0.15 s of CPU a job) is imported once by the
    server, and the tokenizer's vocabulary tables built; and no preloaded import starts a thread (forking then would
    copy a held lock into every job)."""
    code = (
        "import sys, threading\n"
        "from prompt_ot import forkserver\n"
        "forkserver._preload()\n"
        "assert threading.active_count() == 1, threading.enumerate()\n"
        "from prompt_ot.models import backbone\n"
        "assert backbone._bpe_tables.cache_info().currsize == 1  # built once, for every job\n"
        "before = set(sys.modules)\n"
        "from prompt_ot.data import registry\n"
        "names = registry.builtin_names()\n"
        "print(len(names), sorted(set(sys.modules) - before))\n"
    )
    count, imported = _python(code).split(" ", 1)
    recipes = [p.stem for p in (ROOT / "prompt_ot" / "data" / "datasets").glob("*.py") if p.stem != "__init__"]
    assert int(count) == len(recipes) and imported.strip() == "[]"


def test_with_freed_memory_kept_an_evaluation_loop_stops_faulting_in_pages():
    """keep_freed_memory (called by the server before it forks any job): a loop that allocates and frees activations of
    about 20 MiB per batch, as an evaluation does, faults pages in again batch after batch under glibc's defaults (the
    memory is given back to the kernel) and, once the heap has grown to the loop's size, hardly ever with the options;
    the values computed are the same."""
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("keep_freed_memory tunes glibc's malloc; this C library is not glibc")
    code = (
        "import resource, sys, torch\n"
        "from prompt_ot import forkserver\n"
        "kept = forkserver.keep_freed_memory() if sys.argv[1] == 'keep' else None\n"
        "torch.manual_seed(0)\n"
        "w1, w2 = torch.randn(128, 512) / 16, torch.randn(512, 128) / 16\n"
        "faults, total = [], 0.0\n"
        "for _ in range(80):  # 512 images of 21 tokens through an MLP block, batch after batch\n"
        "    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "    y = torch.nn.functional.gelu(torch.randn(512 * 21, 128) @ w1) @ w2\n"
        "    total += float(y.sum())\n"
        "    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
        "print(kept, faults[0], sum(faults[20:]), repr(total))\n"
    )

    def run(mode):
        kept, first, last60, total = _python(code, mode).split()
        return kept, int(first), int(last60), total

    # counted in units of the first batch's faults (all its memory new), so that the page size does not matter (4 KiB
    # pages, or 2 MiB where transparent huge pages are always on)
    kept, first_kept, faults_kept, total_kept = run("keep")
    _, first_default, faults_default, total_default = run("default")
    assert kept == "True"
    # over the last 60 batches: under the defaults batch after batch faults its memory in again (10 to 46 first
    # batches' worth on the build machine); with the options the heap has reached the loop's size after 20 batches (at
    # most one late extension seen)
    assert faults_default > 3 * first_default, (faults_default, first_default)
    assert faults_kept < 0.5 * first_kept, (faults_kept, first_kept)
    assert total_kept == total_default
