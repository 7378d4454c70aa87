"""Shared fixtures: offline, telemetry off; the session's shrunken grid; GPU tests skipped without a GPU."""

import os
import re
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
# one thread per process, as every pipeline job runs: under pytest-xdist several workers share the cores, and a
# test's result then does not depend on how many there are
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest  # noqa: E402

# pytest-xdist (make test: -n 4 --dist loadgroup --no-loadscope-reorder) takes the tests in this order: the SLURM
# tests (the longest chain, mostly waiting), `dvc exp` (the longest reader of the session grid, whose worker builds
# it), the long modules that do not need the grid (while it is being built), the grid's other readers, the rest
FIRST = ("test_slurm.py", "test_dvc_exp.py", "test_workflow.py", "test_forkserver.py", "test_bench.py")
FIRST += ("test_pretrain.py", "test_reliability.py", "test_e2e.py", "test_mlflow_server.py", "test_tracking.py")
# the test files with a module- or class-scoped fixture: their tests stay in one worker, so that it is built once
SHARED_FIXTURES = {
    path.name
    for path in Path(__file__).parent.glob("test_*.py")
    if re.search(r"scope=\"(module|class)\"", path.read_text())
}


def pytest_xdist_make_scheduler(config, log):
    """For ``--dist loadgroup``: the tests of a file in SHARED_FIXTURES as one unit of work, every other test on its
    own, in collection order. (pytest-xdist 3.8's own loadgroup reads ``xdist_group`` marks through ``item._nodeid``,
    which pytest 9 no longer uses for a test's id, so its groups never reach the scheduler.)"""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FixtureGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = nodeid.split("::", 1)[0]
            return file if Path(file).name in SHARED_FIXTURES else nodeid

    return FixtureGroups(config, log)


def pytest_collection_modifyitems(config, items):
    system = pytest.mark.system
    for item in items:  # what reads the session's pipeline grid runs a whole pipeline first
        if "shrunken_grid" in getattr(item, "fixturenames", ()) and "system" not in item.keywords:
            item.add_marker(system)
    rank = {name: k for k, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(FIRST)))  # stable: the rest keep their order
    if not any("gpu" in item.keywords for item in items):
        return  # torch's import (seconds) only when a gpu test was collected
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch missing is a broken install
        has_gpu = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def shrunken_grid(tmp_path_factory, worker_id):
    """The session's shrunken grid (tests/support/grid.py), built once, also across pytest-xdist workers. Read it;
    copy it (``tests.support.workflow.copy_workspace``) to change it."""
    from tests.support.grid import shared_grid

    root = tmp_path_factory.getbasetemp()
    if worker_id != "master":  # every xdist worker has its own base folder under the session's
        root = root.parent
    return shared_grid(root)
