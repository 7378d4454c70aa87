"""A fork server for the stage commands: the pipeline's jobs start in milliseconds instead of seconds.

Every job of the pipeline is a fresh ``python -m prompt_ot <stage>`` process, and importing torch, torchvision
and open_clip costs several seconds each time, which dominates a grid of many small jobs on a CPU (the
offline demo runs about 150). ``python -m prompt_ot forkserver --socket PATH`` imports them once and waits on
a UNIX socket; with ``PROMPT_OT_FORKSERVER=PATH`` in the environment, ``python -m prompt_ot <stage> ...``
sends its arguments, working folder, environment and standard streams to the server, which forks a child
that runs exactly the command the process would have run, writing to the job's own stdout and stderr, and
the job exits with the child's status. Snakemake, DVC and the stage commands are unchanged; without the
variable (or when no server answers) the command runs in its own process as always.

What makes the child the same as a fresh process: nothing but imports runs in the server (no tensors, no
threads: the server refuses to serve if a thread was started), the child takes the job's environment and
folder, sets torch's thread count from ``OMP_NUM_THREADS`` as a fresh process would, and restores the
random generators' state of a fresh import. Tests compare a job's outputs through the server with a fresh
process's, byte for byte.

Signals: SIGINT and SIGTERM sent to the job are passed to the child; if the job dies (SIGKILL, a lost
shell), the child is killed too, so a killed job leaves nothing running, as a killed process would.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys

from prompt_ot.forkclient import _EXIT, _IN_CHILD, _SIGNAL, _recv_exact

# what the server imports once: everything heavy that the stage commands import (MLflow's client and its SQLite
# store too: a job that logs live spends about 2 s importing them; none of these imports starts a thread)
PRELOAD = (
    "numpy",
    "torch",
    "torchvision",
    "open_clip",
    "safetensors.torch",
    "PIL.Image",
    "yaml",
    "jsonschema",
    "mlflow",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.artifact.local_artifact_repo",
    "prompt_ot.commands.train",
    "prompt_ot.commands.evaluate",
    "prompt_ot.commands.cache",
    "prompt_ot.commands.split",
    "prompt_ot.commands.report",
    "prompt_ot.commands.backbone",
    "prompt_ot.train",
    "prompt_ot.cache",
    "prompt_ot.models.prompted",
    "prompt_ot.methods",
    "prompt_ot.config",
    # and what the jobs imported on their own, about 0.15 s of CPU each (measured on the demo's evaluation jobs)
    "scipy.special",
    "torchvision.transforms.v2",
    "prompt_ot.cli",
    "prompt_ot.checkpoint",
    "prompt_ot.devices",
    "prompt_ot.evaluate",
    "prompt_ot.losses",
    "prompt_ot.models.backbone",
    "prompt_ot.models.matrix",
    "prompt_ot.provenance",
    "prompt_ot.results",
    "prompt_ot.tracking.pipeline",
    "prompt_ot.tracking.tracker",
    "prompt_ot.data.augment",
    "prompt_ot.data.custom",
    "prompt_ot.data.demo",
    "prompt_ot.data.fewshot",
    "prompt_ot.data.shifts",
    "prompt_ot.data.splits",
    "prompt_ot.data.store",
    "prompt_ot.data.registry",  # and every dataset recipe it imports (recipe_modules)
)


# glibc malloc's options (mallopt's parameter numbers): the most a freed heap may keep before it is given back to the
# kernel, what each extension of the heap adds, and the size from which a block is mapped on its own
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MALLOC_OPTIONS = {M_MMAP_THRESHOLD: 1 << 30, M_TRIM_THRESHOLD: 2**31 - 1, M_TOP_PAD: 64 << 20}


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep the memory a process frees for its next allocations (every job forked later inherits
    this); False where the C library has no ``mallopt`` (not glibc), which changes nothing else, or refuses an option
    (those after it are then not set).

    By default glibc maps each block above a threshold (128 KiB, raised as such blocks are freed, to at most 32 MiB)
    on its own and gives it back to the kernel when it is freed, and trims the heap when more than twice that threshold
    is free at its top; the next allocation is then faulted in again page by page, each page zeroed by the kernel. An
    evaluation job allocates and frees activations of tens of MiB for every batch of test images: the demo's
    domain-generalisation job (IVLP, 8,000 images) took 0.6 to 1 M page faults and 1.1 to 1.8 s of system time beside
    5 s of computation, and 61 to 86 k faults and 0.2 s with these options (docs/performance.md). A job is a short
    process that holds what it freed until it exits; its peak memory stayed about the same (1.06 GB against 1.12 GB,
    the base-to-novel evaluation of IVLP on Fashion-MNIST in a process of its own). The arithmetic, and so every
    result, is the same."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return all(mallopt(param, value) == 1 for param, value in MALLOC_OPTIONS.items())


# ---------------------------------------------------------------------------------------------- server
def _preload() -> None:
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    from prompt_ot.data.registry import recipe_modules

    for name in recipe_modules():
        importlib.import_module(name)
    from prompt_ot.models.backbone import warm

    warm()  # the tokenizer's vocabulary tables, about 70 ms a job


def _child(conn: socket.socket, request: dict, fds: list[int], rng_state) -> None:
    """In the forked child: become the job (streams, folder, environment), run the command, report, exit."""
    import atexit
    import threading

    for target, fd in zip((0, 1, 2), fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ[_IN_CHILD] = "1"
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def watch():  # the job's signals, and its death
        while True:
            try:
                message = conn.recv(2)
            except OSError:
                message = b""
            if not message:
                os.kill(os.getpid(), signal.SIGKILL)
            if message[:1] == _SIGNAL and len(message) == 2:
                os.kill(os.getpid(), message[1])

    threading.Thread(target=watch, daemon=True).start()
    import torch

    torch.set_rng_state(rng_state)
    # as the command's own process: cli.main makes one thread the default before torch is imported
    threads = os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", threads)
    torch.set_num_threads(int(threads) if threads.isdigit() and int(threads) > 0 else 1)
    sys.argv = ["python -m prompt_ot", *request["argv"]]
    status = 1
    try:
        from prompt_ot.cli import main

        status = int(main(request["argv"]) or 0)
    except SystemExit as exit_:
        code = exit_.code
        status = code if isinstance(code, int) else (0 if code is None else 1)
        if isinstance(code, str):
            print(code, file=sys.stderr)
    except KeyboardInterrupt:
        status = 130
    except BaseException:  # noqa: BLE001 - the traceback goes to the job's stderr, as in its own process
        import traceback

        traceback.print_exc()
        status = 1
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        try:
            conn.sendall(_EXIT + struct.pack("!i", status))
        except OSError:
            pass
        os._exit(status & 0xFF)


def serve(path: str, ready=None) -> None:
    """Import the heavy modules once, then fork one child per job that connects to the UNIX socket ``path``."""
    import threading

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # no thread pool may exist when the server forks
    keep_freed_memory()
    _preload()
    import torch

    if threading.active_count() != 1:
        raise RuntimeError(
            f"an import started {threading.active_count() - 1} thread(s); forking would copy a "
            "half-held lock into every job, so the fork server does not start"
        )
    torch.manual_seed(torch.initial_seed())  # the generator exactly as a fresh import leaves it
    rng_state = torch.get_rng_state()
    if os.path.exists(path):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(64)
    children: dict[int, socket.socket] = {}

    def reap(*_):
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = children.pop(pid, None)
            if conn is not None:
                if os.WIFSIGNALED(status):  # the child died by a signal before it could report
                    try:
                        conn.sendall(_EXIT + struct.pack("!i", -os.WTERMSIG(status)))
                    except OSError:
                        pass
                conn.close()

    signal.signal(signal.SIGCHLD, reap)
    stop = {"now": False}

    def shutdown(*_):
        stop["now"] = True
        server.close()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    print(f"prompt_ot fork server {os.getpid()} listening on {path}", flush=True)
    if ready is not None:
        ready()
    try:
        while not stop["now"]:
            try:
                conn, _ = server.accept()
            except InterruptedError:
                continue
            except OSError:
                if stop["now"]:
                    break
                raise
            try:
                header, fds, _, _ = socket.recv_fds(conn, 4, 3)
                request = json.loads(_recv_exact(conn, struct.unpack("!I", header)[0]))
            except (OSError, ValueError, struct.error):
                conn.close()
                continue
            # SIGCHLD waits until the child is registered, so a child that ends at once is still reported
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
            try:
                pid = os.fork()
                if pid == 0:
                    server.close()
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
                    _child(conn, request, fds, rng_state)
                for fd in fds:
                    os.close(fd)
                children[pid] = conn
                print(f"job {pid}: python -m prompt_ot {' '.join(request['argv'])}", flush=True)
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
            reap()
    finally:
        if os.path.exists(path):
            os.unlink(path)
