"""Each concurrently running job claims a different GPU; a finished (or killed) job frees its GPU."""

import os
import subprocess
import sys
import textwrap

from prompt_ot.devices import claim_gpu, pick_device

CLAIM = textwrap.dedent("""
    import sys, time
    from prompt_ot.devices import claim_gpu
    print(claim_gpu(int(sys.argv[1]), wait_seconds=30, poll=0.05), flush=True)
    time.sleep(float(sys.argv[2]))
""")


def _spawn(count, hold, env):
    return subprocess.Popen(
        [sys.executable, "-c", CLAIM, str(count), str(hold)], stdout=subprocess.PIPE, text=True, env=env
    )


def test_concurrent_jobs_get_distinct_gpus_and_release_them(tmp_path):
    env = {**os.environ, "PROMPT_OT_GPU_LOCK_DIR": str(tmp_path)}
    jobs = [_spawn(4, 3, env) for _ in range(4)]
    claimed = sorted(int(job.stdout.readline()) for job in jobs)
    assert claimed == [0, 1, 2, 3]
    # a fifth job waits until one of the four ends, then gets the freed GPU
    fifth = _spawn(4, 0, env)
    assert int(fifth.stdout.readline()) in range(4)
    for job in jobs + [fifth]:
        job.wait(timeout=30)


def test_killed_job_releases_its_gpu(tmp_path):
    env = {**os.environ, "PROMPT_OT_GPU_LOCK_DIR": str(tmp_path)}
    holder = _spawn(1, 60, env)
    assert holder.stdout.readline().strip() == "0"
    holder.kill()
    holder.wait()
    follower = _spawn(1, 0, env)
    assert follower.stdout.readline().strip() == "0"
    follower.wait(timeout=30)


def test_visible_devices_name_the_locks(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPT_OT_GPU_LOCK_DIR", str(tmp_path))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    assert claim_gpu(2) == 0
    assert (tmp_path / "gpu5.lock").exists()


def test_cpu_when_no_gpu():
    import torch

    if not torch.cuda.is_available():
        assert pick_device() == "cpu"
    assert pick_device("cpu") == "cpu"
