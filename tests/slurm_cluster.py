"""A throw-away, single-node SLURM cluster with real accounting, for tests.

Everything (munge key and socket, MariaDB data, slurmdbd, slurmctld, slurmd,
configs, state, logs) lives under one temporary folder; every daemon runs in
the foreground under ``subprocess.Popen`` in its own session, and ``stop()``
kills exactly those processes by PID (and their process groups/sessions) --
never by name -- so two clusters, or a system-wide SLURM, never interfere.

Pure standard library: importable without pytest (see tests/slurm_fixture.py
for the pytest fixture).

    cluster = SlurmCluster("/tmp/x")
    cluster.start()            # returns when the node is idle and sacct answers
    env = {**os.environ, **cluster.env}
    subprocess.run(["sbatch", ...], env=env)
    cluster.stop()
"""

from __future__ import annotations

import atexit
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["SlurmCluster", "SlurmClusterError", "available", "REQUIRED_BINARIES"]

# Client tools are in /usr/bin, daemons in /usr/sbin (often not on PATH).
_SEARCH_PATH = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/local/sbin"]
)
REQUIRED_BINARIES = (
    "munged", "mariadbd", "mariadb-install-db", "slurmdbd", "slurmctld",
    "slurmd", "sbatch", "sacct", "sacctmgr", "sinfo", "scontrol", "scancel",
)

CLUSTER_NAME = "maetest"
_DB_NAME = "slurm_acct_db"
_DB_USER = "slurm"
_DB_PASS = "slurmtestpw"
# Unix socket paths are limited to 108 bytes (sun_path); longer roots put
# sockets and the slurmd spool in a short folder under /tmp (see _setup_dirs).
_MAX_ROOT_FOR_SOCKETS = 45


def wait_until(what, predicate, timeout, context=lambda: "", interval=0.25):
    """predicate()'s first true value, polled until `timeout` s; then fail with context() (logs)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{context()}")
        time.sleep(interval)


class SlurmClusterError(RuntimeError):
    pass


def _which(name: str) -> str | None:
    return shutil.which(name, path=_SEARCH_PATH)


def available() -> tuple[bool, str]:
    """(True, "") if a cluster can be started here, else (False, reason)."""
    missing = [b for b in REQUIRED_BINARIES if _which(b) is None]
    if missing:
        return False, (
            "SLURM binaries missing (%s); run scripts/install_slurm.sh as root"
            % ", ".join(missing)
        )
    if os.name != "posix" or os.geteuid() != 0:
        # slurmd must run as root to launch jobs; munged/mariadb as root too.
        return False, "a test SLURM cluster needs root (slurmd runs jobs as root here)"
    return True, ""


def _free_port() -> int:
    # Let the kernel pick a free port. There is a small race between closing
    # this socket and the daemon binding it; acceptable for tests.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_ports(n: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(_free_port())
    return sorted(ports)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: ask the kernel to SIGKILL the
    # daemon if the Python process that started it dies without calling stop()
    # (e.g. pytest killed with SIGKILL), so no daemon outlives the test run.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except Exception:
        pass


def _tail(path: Path, lines: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
    except OSError as e:
        return "<unreadable: %s>" % e
    return "\n".join(text.splitlines()[-lines:])


def _leftover_processes(sids: set[int], conf: Path) -> list[int]:
    """PIDs of processes this cluster left behind after its daemons died.

    - anything still in one of the daemons' sessions (each daemon was started
      with start_new_session=True, so its PID is its session id);
    - slurmstepd and job processes: they run in sessions of their own, so
      they are recognised by their environment, which carries this cluster's
      unique SLURM_CONF path (plus SLURM_JOB_ID, or slurmstepd as command).
    """
    me = os.getpid()
    marker = b"SLURM_CONF=" + str(conf).encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open("/proc/%s/stat" % entry, "rb") as f:
                stat = f.read()
            # Fields after the ")" that closes comm: state ppid pgrp session ...
            fields = stat[stat.rfind(b")") + 2:].split()
            if fields[0] == b"Z":
                continue  # already dead, waiting to be reaped
            if int(fields[3]) in sids:
                found.append(int(entry))
                continue
            with open("/proc/%s/environ" % entry, "rb") as f:
                env = f.read().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if marker in env:
            comm = stat[stat.find(b"(") + 1:stat.rfind(b")")]
            if comm.startswith(b"slurmstepd") or any(v.startswith(b"SLURM_JOB_ID=") for v in env):
                found.append(int(entry))
    return found


class SlurmCluster:
    """A private single-node SLURM cluster (munge + MariaDB + slurmdbd +
    slurmctld + slurmd) rooted at `tmpdir`.

    `env` holds what clients need (SLURM_CONF; the munge socket is named in
    the config). Jobs run as root and inherit SLURM_CONF from sbatch, so srun
    inside jobs (submitit) finds the cluster too.

    Start and stop it from the same, long-lived thread (normally the main
    one): daemons get PR_SET_PDEATHSIG, which fires when the *thread* that
    started them exits.
    """

    def __init__(self, tmpdir, cpus: int | None = None, real_memory_mb: int | None = None,
                 partition: str = "debug", startup_timeout: float = 60.0):
        self.root = Path(tmpdir).resolve()
        self.partition = partition
        self.cpus = int(cpus or os.cpu_count() or 1)
        if real_memory_mb is None:
            real_memory_mb = self._detect_memory_mb()
        self.real_memory_mb = int(real_memory_mb)
        self.startup_timeout = startup_timeout
        self.start_time_s: float | None = None  # measured by start()
        self.timings: dict[str, float] = {}  # seconds per startup step
        self._deadline = float("inf")

        self._procs: dict[str, subprocess.Popen] = {}  # name -> daemon, start order
        self._logs: dict[str, Path] = {}
        self._short_dir: str | None = None
        self._started = False
        self._atexit_registered = False

        self.etc = self.root / "etc"
        self.logdir = self.root / "log"
        self.conf = self.etc / "slurm.conf"
        self.dbd_conf = self.etc / "slurmdbd.conf"
        self.env: dict[str, str] = {"SLURM_CONF": str(self.conf)}

    # ------------------------------------------------------------------ utils
    @staticmethod
    def _detect_memory_mb() -> int:
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemTotal:"):
                        total = int(line.split()[1]) // 1024
                        # Stay below what slurmd detects, so the node is never
                        # drained for "Low RealMemory".
                        return max(256, int(total * 0.8))
        except OSError:
            pass
        return 1024

    def _client_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.env)
        env["PATH"] = _SEARCH_PATH
        return env

    def _run(self, args, timeout=30.0, check=True) -> subprocess.CompletedProcess:
        # Own session so that a timeout kills the whole group (mariadb-install-db
        # runs a bootstrap mariadbd underneath), not just the direct child.
        proc = subprocess.Popen(
            [str(a) for a in args], env=self._client_env(), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            proc.communicate()
            raise
        cp = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        if check and cp.returncode != 0:
            raise SlurmClusterError(
                "%s failed (rc=%d)\nstdout: %s\nstderr: %s"
                % (" ".join(map(str, args)), cp.returncode, cp.stdout, cp.stderr)
            )
        return cp

    def _spawn(self, name: str, args: list) -> subprocess.Popen:
        log = self.logdir / ("%s.out" % name)
        self._logs.setdefault(name + " (stdout/stderr)", log)
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [str(a) for a in args],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=self._client_env(), cwd=str(self.root),
                start_new_session=True,  # own session/pgid == pid: killable as a group
                preexec_fn=_die_with_parent,
            )
        self._procs[name] = proc
        return proc

    def _wait_for(self, what: str, predicate, timeout: float, procs=(), interval=0.1):
        # Each wait has its own budget, capped by the overall startup_timeout.
        deadline = min(time.monotonic() + timeout, self._deadline)
        while True:
            for name in procs:
                p = self._procs.get(name)
                if p is not None and p.poll() is not None:
                    raise SlurmClusterError(
                        "%s exited with code %s while waiting for %s" % (name, p.returncode, what)
                    )
            try:
                if predicate():
                    return
            except (OSError, subprocess.SubprocessError):
                pass
            if time.monotonic() > deadline:
                raise SlurmClusterError("timed out waiting for %s" % what)
            time.sleep(interval)

    # ------------------------------------------------------------------ start
    def start(self) -> "SlurmCluster":
        if self._started:
            return self
        ok, reason = available()
        if not ok:
            raise SlurmClusterError(reason)
        t0 = time.monotonic()
        self._deadline = t0 + self.startup_timeout
        self._started = True
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True
        try:
            for step in (self._setup_dirs, self._start_munge, self._start_mariadb,
                         self._write_configs, self._start_slurmdbd, self._start_slurm):
                t = time.monotonic()
                step()
                self.timings[step.__name__.lstrip("_")] = round(time.monotonic() - t, 2)
        except BaseException:
            self.stop()  # never leave half a cluster running
            raise
        self.start_time_s = time.monotonic() - t0
        return self

    def _setup_dirs(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for d in ("etc", "log", "state", "run", "db"):
            (self.root / d).mkdir(exist_ok=True)
        # Unix socket paths are limited to 108 bytes: munged's and mariadb's
        # sockets, and slurmstepd's per-step sockets in the slurmd spool dir
        # ("<spool>/localhost_<jobid>.<stepid>", up to ~30 chars, else the job
        # fails at launch). A deep tmpdir gets a short private dir instead.
        shortroot = self.root
        if len(str(self.root)) > _MAX_ROOT_FOR_SOCKETS:
            self._short_dir = tempfile.mkdtemp(prefix="slurm-", dir="/tmp" if os.path.isdir("/tmp") else None)
            shortroot = Path(self._short_dir)
        sockdir = shortroot / "sock"
        sockdir.mkdir(exist_ok=True)
        # Clients (also job processes) must be able to reach the sockets.
        os.chmod(sockdir, 0o755)
        self.sockdir = sockdir
        self.spooldir = shortroot / "spool"
        self.spooldir.mkdir(exist_ok=True)
        self.munge_socket = sockdir / "munge.socket"
        self.db_socket = sockdir / "mariadb.sock"
        self.munge_dir = self.root / "munge"
        self.munge_dir.mkdir(exist_ok=True)
        os.chmod(self.munge_dir, 0o700)  # munged insists the key dir is private
        (self.ctld_port, self.slurmd_port, self.dbd_port, self.db_port) = _free_ports(4)

    def _start_munge(self) -> None:
        key = self.munge_dir / "munge.key"
        if not key.exists():
            # Own random key (1024 bytes from /dev/urandom, like `dd`); mode 400
            # because munged refuses keys readable by others.
            with open(key, "wb") as f:
                f.write(os.urandom(1024))
            os.chmod(key, 0o400)
        log = self.logdir / "munged.log"
        self._logs["munged"] = log
        self._spawn("munged", [
            _which("munged"), "--foreground",
            # --force: run as root and accept our non-standard dir ownership/perms.
            "--force",
            "--key-file=%s" % key,
            "--socket=%s" % self.munge_socket,
            "--pid-file=%s" % (self.root / "run" / "munged.pid"),
            "--log-file=%s" % log,
            "--seed-file=%s" % (self.munge_dir / "munged.seed"),
            "--num-threads=4",
        ])
        self._wait_for("munged socket", lambda: self.munge_socket.exists(), 15, ["munged"])

    def _start_mariadb(self) -> None:
        datadir = self.root / "db"
        log = self.logdir / "mariadb.log"
        self._logs["mariadb"] = log
        # Options shared by the bootstrap and the server. Small buffers and no
        # durability: this DB lives for one test session.
        common = [
            "--datadir=%s" % datadir,
            "--user=root",
            "--innodb-buffer-pool-size=32M",
            "--innodb-log-file-size=16M",
            "--innodb-flush-log-at-trx-commit=0",
            "--innodb-doublewrite=0",
            "--innodb-use-native-aio=0",  # AIO is unavailable in some sandboxes
            "--skip-log-bin",
        ]
        if not (datadir / "mysql").exists():
            # Create slurmdbd's database and user while bootstrapping, so no
            # client round-trip is needed afterwards. slurmdbd connects over TCP
            # (it has no socket option), hence the 127.0.0.1 user.
            init_sql = self.etc / "init.sql"
            init_sql.write_text(
                # The bootstrap runs with grant tables off; loading them is
                # what makes CREATE USER / GRANT legal here.
                "FLUSH PRIVILEGES;\n"
                "CREATE DATABASE IF NOT EXISTS {db};\n"
                "CREATE USER IF NOT EXISTS '{u}'@'127.0.0.1' IDENTIFIED BY '{p}';\n"
                "CREATE USER IF NOT EXISTS '{u}'@'localhost' IDENTIFIED BY '{p}';\n"
                "GRANT ALL ON {db}.* TO '{u}'@'127.0.0.1';\n"
                "GRANT ALL ON {db}.* TO '{u}'@'localhost';\n".format(
                    db=_DB_NAME, u=_DB_USER, p=_DB_PASS)
            )
            self._run(
                [_which("mariadb-install-db"), "--no-defaults", *common,
                 "--auth-root-authentication-method=socket", "--skip-test-db",
                 "--skip-name-resolve", "--extra-file=%s" % init_sql],
                timeout=120,
            )
        self._spawn("mariadbd", [
            _which("mariadbd"), "--no-defaults", *common,
            "--socket=%s" % self.db_socket,
            "--pid-file=%s" % (self.root / "run" / "mariadbd.pid"),
            "--port=%d" % self.db_port,
            "--bind-address=127.0.0.1",
            "--skip-name-resolve",
            "--log-error=%s" % log,
        ])
        self._wait_for("mariadb on port %d" % self.db_port,
                       lambda: _port_open(self.db_port), 60, ["mariadbd"])

    def _write_configs(self) -> None:
        auth_socket = str(self.munge_socket)
        run, state, logd = (self.root / d for d in ("run", "state", "log"))
        spool = self.spooldir
        self._logs["slurmdbd"] = logd / "slurmdbd.log"
        self._logs["slurmctld"] = logd / "slurmctld.log"
        self._logs["slurmd"] = logd / "slurmd.log"
        dbd = f"""\
# Generated by tests/slurm_cluster.py
AuthType=auth/munge
AuthInfo=socket={auth_socket}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={self.dbd_port}
SlurmUser=root
DebugLevel=info
LogFile={logd / 'slurmdbd.log'}
PidFile={run / 'slurmdbd.pid'}
StorageType=accounting_storage/mysql
# TCP on 127.0.0.1: slurmdbd has no option for a unix socket, and "localhost"
# would make libmysqlclient use the system default socket instead of ours.
StorageHost=127.0.0.1
StoragePort={self.db_port}
StorageUser={_DB_USER}
StoragePass={_DB_PASS}
StorageLoc={_DB_NAME}
"""
        self.dbd_conf.write_text(dbd)
        os.chmod(self.dbd_conf, 0o600)  # slurmdbd refuses a world-readable conf (it holds a password)

        # Share each job's memory so jobs can run side by side (see DefMemPerCPU).
        def_mem = max(100, min(2048, self.real_memory_mb // (2 * self.cpus)))
        conf = f"""\
# Generated by tests/slurm_cluster.py: private single-node test cluster.
ClusterName={CLUSTER_NAME}
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# Our own munged socket. cred_expire=10 (default 120): a requeued job may not
# start again until its old credential expired, so the default makes a
# requeue take over two minutes.
AuthInfo=socket={auth_socket},cred_expire=10
StateSaveLocation={state}
SlurmdSpoolDir={spool}/%n
SlurmctldPidFile={run / 'slurmctld.pid'}
SlurmdPidFile={run / 'slurmd-%n.pid'}
SlurmctldLogFile={logd / 'slurmctld.log'}
SlurmdLogFile={logd / 'slurmd.log'}
SlurmctldDebug=info
SlurmdDebug=info
MpiDefault=none
# No cgroups in containers / sandboxes: track job processes via /proc, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# Trust the CPUs/memory declared below rather than the detected hardware, so
# the node never goes INVALID/DRAIN on a small or odd machine.
SlurmdParameters=config_overrides
# Come back idle on registration even after an unexpected restart.
ReturnToService=2
# Schedule by core and memory. Without a DefMemPerCPU every job would
# reserve all the node's memory and jobs could never run side by side.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU={def_mem}
SchedulerType=sched/backfill
# Re-evaluate pending (e.g. requeued) jobs every second instead of every 60 s.
SchedulerParameters=sched_interval=1,bf_interval=1,sched_min_interval=0
# Forget finished jobs quickly in slurmctld (sacct still has them), and kill
# cancelled jobs fast.
MinJobAge=10
KillWait=2
OverTimeLimit=0
JobRequeue=1
InactiveLimit=0
Waittime=0
SlurmdTimeout=60
SlurmctldTimeout=60
MessageTimeout=10
# Real accounting through our slurmdbd (submitit reads job states via sacct;
# without accounting every state reads UNKNOWN).
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort={self.dbd_port}
# For auth/munge this is the munge socket used to talk to slurmdbd: without it
# clients (sacct, sacctmgr) try munge's default socket and fail with
# "Protocol authentication error".
AccountingStoragePass={auth_socket}
JobCompType=jobcomp/none
NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.real_memory_mb} State=UNKNOWN
PartitionName={self.partition} Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""
        self.conf.write_text(conf)
        os.chmod(self.conf, 0o644)

    def _start_slurmdbd(self) -> None:
        self._spawn("slurmdbd", [_which("slurmdbd"), "-D"])
        # slurmdbd only listens once it has created its tables in MariaDB.
        self._wait_for("slurmdbd on port %d" % self.dbd_port,
                       lambda: _port_open(self.dbd_port), 60, ["slurmdbd", "mariadbd"])
        # slurmctld needs the cluster to exist in the accounting DB (it gets
        # its TRES list from there); adding it also creates the root account.
        self._run(["sacctmgr", "-i", "add", "cluster", CLUSTER_NAME], timeout=30)

    def _start_slurm(self) -> None:
        # -D: foreground; -i: ignore unreadable state (fresh dir anyway).
        self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", self.conf])
        self._wait_for("slurmctld to answer", self._ctld_up, 30, ["slurmctld"], interval=0.2)
        self._spawn("slurmd", [_which("slurmd"), "-D", "-N", "localhost", "-f", self.conf])
        self._wait_for("node localhost to be idle", self._node_idle, 30,
                       ["slurmctld", "slurmd"], interval=0.2)
        self._wait_for(
            "sacct to answer",
            lambda: self._run(["sacct", "-n", "-X", "-P", "-a"], timeout=10, check=False).returncode == 0,
            30, ["slurmdbd", "slurmctld"], interval=0.2,
        )

    def _ctld_up(self) -> bool:
        cp = self._run(["scontrol", "ping"], timeout=10, check=False)
        return cp.returncode == 0 and "UP" in cp.stdout

    def _node_idle(self) -> bool:
        cp = self._run(["sinfo", "-h", "-N", "-n", "localhost", "-o", "%T"], timeout=10, check=False)
        return cp.returncode == 0 and cp.stdout.strip() == "idle"

    # ------------------------------------------------------------------- stop
    def stop(self, timeout: float = 10.0) -> None:
        """Stop every daemon this object started (by PID). Idempotent."""
        if self._atexit_registered:
            try:
                atexit.unregister(self.stop)
            except Exception:
                pass
            self._atexit_registered = False
        procs = self._procs
        if not procs:
            self._cleanup_short_dir()
            self._started = False
            return
        # Cancel whatever is still queued/running so slurmd tears job steps
        # down itself (slurmstepd survives a slurmd restart by design).
        if all(n in procs and procs[n].poll() is None for n in ("slurmctld", "slurmd")):
            try:
                cp = self._run(["squeue", "-h", "-o", "%A"], timeout=5, check=False)
                ids = cp.stdout.split()
                if ids:
                    self._run(["scancel", *ids], timeout=5, check=False)
                    deadline = time.monotonic() + 5
                    while time.monotonic() < deadline:
                        cp = self._run(["squeue", "-h", "-o", "%A"], timeout=5, check=False)
                        if cp.returncode != 0 or not cp.stdout.split():
                            break
                        time.sleep(0.2)
            except Exception:
                pass
        sids = {p.pid for p in procs.values()}
        # Reverse start order: slurmd, slurmctld, slurmdbd, mariadbd, munged.
        for name in reversed(list(procs)):
            self._terminate(procs[name], timeout)
        # Leftovers: slurmstepd / job processes that outlived slurmd.
        for pid in _leftover_processes(sids, self.conf):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        self._procs = {}
        self._started = False
        self._cleanup_short_dir()

    @staticmethod
    def _terminate(proc: subprocess.Popen, timeout: float) -> None:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)  # pgid == pid (own session)
            except OSError:
                try:
                    proc.terminate()
                except OSError:
                    pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # Kill whatever is left in its process group, and the daemon itself.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        if proc.poll() is None:
            try:
                proc.kill()
            except OSError:
                pass
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass

    def _cleanup_short_dir(self) -> None:
        if self._short_dir:
            shutil.rmtree(self._short_dir, ignore_errors=True)
            self._short_dir = None

    # -------------------------------------------------------------- reporting
    def logs(self, lines: int = 40) -> str:
        """Tail of every daemon log, for failure messages."""
        parts = []
        for name, path in self._logs.items():
            if not path.exists() or path.stat().st_size == 0:
                continue
            # A daemon's stdout/stderr mostly repeats its log file; it matters
            # for errors before the log file is opened, so show less of it.
            n = max(5, lines // 4) if name.endswith("(stdout/stderr)") else lines
            parts.append("===== %s: %s =====\n%s" % (name, path, _tail(path, n)))
        for name, p in self._procs.items():
            rc = p.poll()
            parts.append("%s pid %d: %s" % (name, p.pid, "running" if rc is None else "exited %s" % rc))
        return "\n".join(parts) if parts else "<no daemon logs>"

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self):
        return "SlurmCluster(%r, running=%s)" % (str(self.root), bool(self._procs))
