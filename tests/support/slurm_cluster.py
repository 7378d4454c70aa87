"""A real one-node SLURM cluster in a temporary folder, started by hand (no systemd) and stopped by pid.

Debian's slurm-wlm 22.05 (slurmctld, slurmd), slurmdbd backed by MariaDB (accounting, so `sacct` answers) and
munge (authentication). The node claims 8 CPUs, 32 GB and two GPUs whatever the machine has
(``SlurmdParameters=config_overrides``), so that a profile derived from ``workflow/profiles/slurm`` runs as it
would on a GPU node; the GPUs are character devices in the folder (``/dev/null``'s numbers), and a job given
``--gpus=1`` sees ``CUDA_VISIBLE_DEVICES`` as SLURM sets it on a real node. Partitions ``cpu`` and ``gpu``, as
the shipped profile names them.

The plugin's job step strips every ``SLURM_*`` variable (``SLURM_CONF`` too) before its inner ``srun``, so the
configuration must be at ``/etc/slurm/slurm.conf``: while the cluster runs, that path (and ``slurmdbd.conf``,
``gres.conf`` beside it) are links into the folder; an existing file there (a real cluster's) makes the cluster
refuse to start rather than replace it.

``Cluster(folder, accounting=False)`` runs without slurmdbd and MariaDB: ``sacct`` then answers "accounting
storage is disabled", as on clusters without accounting.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

ETC = Path("/etc/slurm")
LINKED = ("slurm.conf", "slurmdbd.conf", "gres.conf")
MUNGE_RUN = Path("/run/munge")
PACKAGES = "slurm-wlm slurmdbd munge mariadb-server"
DAEMONS = ("munged", "mariadbd", "mariadb-install-db", "slurmdbd", "slurmctld", "slurmd", "sacct", "sbatch")
NODE_CPUS, NODE_MEMORY_MB, NODE_GPUS = 8, 32000, 2
MIN_JOB_AGE = 120  # seconds a finished job stays visible to squeue (>= 3x the test profile's first status check)


class ClusterUnavailable(Exception):
    """The cluster cannot run here (missing packages, not root, a real cluster's configuration present)."""


def why_unavailable() -> str | None:
    """One line saying why no cluster can start here, or None."""
    missing = [d for d in DAEMONS if shutil.which(d) is None and not Path("/usr/sbin", d).exists()]
    if missing:
        return f"SLURM test cluster needs Debian's {PACKAGES} (missing: {', '.join(missing)})"
    if os.geteuid() != 0:
        return "SLURM test cluster must start its daemons as root"
    for name in LINKED:
        path = ETC / name
        if (path.exists() or path.is_symlink()) and not path.is_symlink():
            return f"SLURM test cluster will not replace the existing {path}"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _exe(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class Cluster:
    def __init__(self, folder: Path, accounting: bool = True):
        self.dir = Path(folder)
        self.accounting = accounting
        self.host = socket.gethostname().split(".")[0]
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.linked: list[Path] = []
        self.started_munge = False

    # -- what a test uses -------------------------------------------------------------------------------------

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        result = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def sacct(self, fields: str = "JobID,JobName,State,ExitCode,AllocTRES,Comment,Start,End") -> list[dict]:
        """Every job (allocations only, no steps) recorded by accounting, one dict per job."""
        out = self.run("sacct", "-X", "-a", "-n", "-P", "--starttime", "2000-01-01", "--format", fields).stdout
        names = fields.split(",")
        return [dict(zip(names, line.split("|"))) for line in out.splitlines() if line.strip()]

    def logs(self) -> str:
        """The daemons' log tails, for a failing test's message."""
        parts = []
        for name in ("slurmctld.log", "slurmd.log", "slurmdbd.log", "mariadb.log"):
            path = self.dir / name
            if path.exists():
                parts.append(f"--- {name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-30:]))
        return "\n".join(parts)

    # -- start and stop ----------------------------------------------------------------------------------------

    def start(self) -> Cluster:
        reason = why_unavailable()
        if reason:
            raise ClusterUnavailable(reason)
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            self._write_config()
            self._start_munge()
            if self.accounting:
                self._start_mariadb()
                self._spawn("slurmdbd", [_exe("slurmdbd"), "-D"])
                self._wait(
                    lambda: self.run("sacctmgr", "-n", "list", "cluster", check=False).returncode == 0,
                    "slurmdbd to answer sacctmgr",
                )
            self._spawn("slurmctld", [_exe("slurmctld"), "-D", "-i"])
            self._wait(
                lambda: self.run("scontrol", "ping", check=False).stdout.count("UP") > 0,
                "slurmctld to answer scontrol ping",
            )
            self._spawn("slurmd", [_exe("slurmd"), "-D"])
            self._wait(
                lambda: "idle" in self.run("sinfo", "-h", "-N", "-o", "%T", check=False).stdout,
                "the node to be idle in sinfo",
            )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Cancel every job, stop every daemon this object started (reverse order, by pid), unlink the config."""
        if any(name == "slurmctld" and p.poll() is None for name, p in self.procs):
            subprocess.run(["scancel", "--full", "-u", "root"], capture_output=True, timeout=30)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                out = subprocess.run(["squeue", "-h"], capture_output=True, text=True, timeout=30).stdout
                if not out.strip():
                    break
                time.sleep(0.5)
        for _name, proc in reversed(self.procs):
            _stop(proc)
        self.procs.clear()
        # slurmstepd processes of cancelled jobs outlive slurmd; they are ours (their config is in self.dir)
        subprocess.run(["pkill", "-KILL", "-f", "slurmstepd"], capture_output=True)
        if self.started_munge:
            pid = MUNGE_RUN / "munged.pid"
            if pid.exists():
                try:
                    os.kill(int(pid.read_text().strip()), signal.SIGTERM)
                except (ProcessLookupError, ValueError):
                    pass
            self.started_munge = False
        for link in self.linked:
            if link.is_symlink():
                link.unlink()
        self.linked.clear()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- pieces ------------------------------------------------------------------------------------------------

    def _spawn(self, name: str, cmd: list[str], log: str | None = None) -> subprocess.Popen:
        out = open(self.dir / (log or f"{name}.out"), "ab")
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.dir
        )
        out.close()
        self.procs.append((name, proc))
        return proc

    def _wait(self, ready, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [name for name, p in self.procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(
                    f"SLURM test cluster: waiting for {what} failed"
                    f"{' (' + ', '.join(dead) + ' exited)' if dead else ''}\n{self.logs()}"
                )
            time.sleep(0.2)

    def _start_munge(self) -> None:
        probe = subprocess.run("munge -n | unmunge", shell=True, capture_output=True)
        if probe.returncode == 0:
            return  # a munged already runs on this machine: use it, leave it running
        MUNGE_RUN.mkdir(parents=True, exist_ok=True)
        shutil.chown(MUNGE_RUN, "munge", "munge")
        MUNGE_RUN.chmod(0o755)
        subprocess.run(
            [
                "runuser",
                "-u",
                "munge",
                "--",
                _exe("munged"),
                f"--pid-file={MUNGE_RUN}/munged.pid",
                f"--log-file={MUNGE_RUN}/munged.log",
                f"--seed-file={MUNGE_RUN}/munged.seed",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        self.started_munge = True
        self._wait(
            lambda: subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode == 0, "munged"
        )

    def _start_mariadb(self) -> None:
        data, sock = self.dir / "mariadb", self.dir / "mariadb.sock"
        subprocess.run(
            [
                _exe("mariadb-install-db"),
                "--no-defaults",
                f"--datadir={data}",
                "--user=root",
                "--auth-root-authentication-method=normal",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        self._spawn(
            "mariadbd",
            [
                _exe("mariadbd"),
                "--no-defaults",
                f"--datadir={data}",
                f"--socket={sock}",
                f"--port={self.db_port}",
                "--bind-address=127.0.0.1",
                "--user=root",
                f"--pid-file={self.dir / 'mariadb.pid'}",
                f"--log-error={self.dir / 'mariadb.log'}",
            ],
        )
        sql = ["mariadb", "--no-defaults", f"--socket={sock}", "-u", "root"]
        self._wait(lambda: self.run(*sql, "-e", "SELECT 1", check=False).returncode == 0, "MariaDB")
        self.run(
            *sql,
            "-e",
            "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';"
            " GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;",
        )

    def _write_config(self) -> None:
        d = self.dir
        for sub in ("state", "spool", "gpus"):
            (d / sub).mkdir(exist_ok=True)
        for i in range(NODE_GPUS):
            dev = d / "gpus" / f"nvidia{i}"
            if not dev.exists():
                os.mknod(dev, 0o666 | 0o020000, os.makedev(1, 3))  # a character device, as gres.conf wants
        self.ctld_port, self.slurmd_port, self.dbd_port, self.db_port = (_free_port() for _ in range(4))
        accounting = (
            f"AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=localhost\n"
            f"AccountingStoragePort={self.dbd_port}\nAccountingStorageTRES=gres/gpu\nAccountingStoreFlags=job_comment\n"
            if self.accounting
            else "AccountingStorageType=accounting_storage/none\n"
        )
        (d / "slurm.conf").write_text(
            f"ClusterName=promptot\nSlurmctldHost={self.host}(127.0.0.1)\nSlurmctldPort={self.ctld_port}\n"
            f"SlurmdPort={self.slurmd_port}\nAuthType=auth/munge\nCredType=cred/munge\nSlurmUser=root\n"
            f"SlurmdUser=root\nProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nMpiDefault=none\n"
            f"SelectType=select/cons_tres\nSelectTypeParameters=CR_Core_Memory\nJobAcctGatherType=jobacct_gather/none\n"
            f"SlurmdParameters=config_overrides\nReturnToService=2\nMinJobAge={MIN_JOB_AGE}\nKillWait=5\n"
            f"InactiveLimit=0\nSchedulerParameters=sched_interval=1\n"
            f"StateSaveLocation={d / 'state'}\nSlurmdSpoolDir={d / 'spool'}\n"
            f"SlurmctldPidFile={d / 'slurmctld.pid'}\nSlurmdPidFile={d / 'slurmd.pid'}\n"
            f"SlurmctldLogFile={d / 'slurmctld.log'}\nSlurmdLogFile={d / 'slurmd.log'}\n"
            f"{accounting}GresTypes=gpu\n"
            f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={NODE_CPUS} RealMemory={NODE_MEMORY_MB} "
            f"Gres=gpu:{NODE_GPUS} State=UNKNOWN\n"
            f"PartitionName=gpu Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n"
            f"PartitionName=cpu Nodes=ALL MaxTime=INFINITE State=UP\n"
        )
        (d / "gres.conf").write_text(
            "".join(f"NodeName={self.host} Name=gpu File={d / 'gpus'}/nvidia{i}\n" for i in range(NODE_GPUS))
        )
        dbd = d / "slurmdbd.conf"
        dbd.write_text(
            f"AuthType=auth/munge\nDbdHost=localhost\nDbdPort={self.dbd_port}\nSlurmUser=root\n"
            f"PidFile={d / 'slurmdbd.pid'}\nLogFile={d / 'slurmdbd.log'}\nStorageType=accounting_storage/mysql\n"
            f"StorageHost=127.0.0.1\nStoragePort={self.db_port}\nStorageUser=slurm\nStoragePass=slurm\n"
            f"StorageLoc=slurm_acct_db\n"
        )
        dbd.chmod(0o600)
        ETC.mkdir(parents=True, exist_ok=True)
        for name in LINKED:
            link = ETC / name
            if link.is_symlink():
                link.unlink()  # left by a killed test run
            link.symlink_to(d / name)
            self.linked.append(link)


def _stop(proc: subprocess.Popen, timeout: float = 15) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
