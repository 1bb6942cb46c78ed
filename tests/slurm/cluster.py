"""A one-node SLURM cluster on this machine, for the SLURM integration test.

Daemons: munged (private key and socket), MariaDB (private data directory and port) behind
slurmdbd so that `sacct` reports finished jobs (the executor plugin polls with sacct),
slurmctld, slurmd. The node declares 8 CPUs, 64 GB and two GPUs on dummy character devices
(`SlurmdParameters=config_overrides` lets a small machine declare more than it has), so the
shipped profile's GPU requests can be scheduled unchanged. Accounting records each step's peak
memory (jobacct_gather/linux, polled every 2 s and at the step's end; nothing is killed for
exceeding its ask) and the GPUs a job got (`gres/gpu` TRES). SLURM's commands and the plugin's
job step read the compiled-in /etc/slurm/slurm.conf (the plugin strips SLURM_CONF), so the
config files are symlinked there while the cluster runs, and removed afterwards.

Standalone: `python tests/slurm/cluster.py start DIR` runs until Ctrl-C or SIGTERM, then stops
the daemons and removes the links (needs root and Debian's slurmctld slurmd slurm-client
slurmdbd munge mariadb-server).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ETC = Path("/etc/slurm")
CONFIGS = ("slurm.conf", "gres.conf", "slurmdbd.conf")
GPUS = 2
NEEDED = ("slurmctld", "slurmd", "slurmdbd", "sbatch", "sacct", "sinfo", "sacctmgr", "munged", "mariadbd",
          "mariadb-install-db")


def missing_reason() -> str | None:
    """Why no cluster can be started here (None: it can)."""
    absent = [tool for tool in NEEDED if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists()]
    if absent:
        return f"SLURM is not installed ({', '.join(absent)} missing; Debian: slurmctld slurmd slurm-client " \
               "slurmdbd munge mariadb-server); .ci/run installs it"
    if os.geteuid() != 0:
        return "the one-node SLURM cluster needs root (daemons as root, configs under /etc/slurm)"
    for name in CONFIGS:
        path = ETC / name
        if path.exists() and not path.is_symlink():
            return f"{path} exists and is not ours: this machine has a real SLURM configuration"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(check, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    raise TimeoutError(f"SLURM harness: {what} did not happen within {timeout:.0f} s")


def _die_with_parent() -> None:
    """In the daemon's child before exec: SIGTERM when the process that started the cluster
    dies, so a killed test run leaves no daemons holding SLURM's ports for the next one."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _ok(*cmd: str) -> bool:
    return subprocess.run(cmd, capture_output=True).returncode == 0


class LocalSlurm:
    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.node = socket.gethostname().split(".")[0]
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.db_socket = self.root / "mysql.sock"
        self.db_port = _free_port()
        self.procs: dict[str, subprocess.Popen] = {}

    # ---- configuration ----
    def write_configs(self) -> None:
        for sub in ("munge", "state", "spool", "log", "db"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        for i in range(GPUS):  # two, so that two slides' GPU jobs need not queue behind each other
            gpu = self.root / f"fake-gpu{i}"
            if not gpu.exists():
                os.mknod(gpu, 0o666 | 0o020000, os.makedev(1, 3))  # a character device, like /dev/null
        r = self.root
        (r / "slurm.conf").write_text(f"""ClusterName=tissuekd
SlurmctldHost={self.node}(127.0.0.1)
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
GresTypes=gpu
SlurmdParameters=config_overrides
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=2
AccountingStorageTRES=gres/gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
AccountingStoragePass={self.munge_socket}
AccountingStoreFlags=job_comment
MinJobAge=300
SchedulerParameters=batch_sched_delay=0
NodeName={self.node} NodeAddr=127.0.0.1 CPUs=8 RealMemory=64000 Gres=gpu:{GPUS} State=UNKNOWN
PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
        devices = f"{self.root}/fake-gpu[0-{GPUS - 1}]"
        (r / "gres.conf").write_text(f"AutoDetect=off\nNodeName={self.node} Name=gpu File={devices}\n")
        dbd = r / "slurmdbd.conf"
        dbd.write_text(f"""AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
PidFile={r}/slurmdbd.pid
LogFile={r}/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={self.db_port}
StorageUser=root
StorageLoc=slurm_acct_db
""")
        os.chmod(dbd, 0o600)  # slurmdbd refuses a readable config
        for name in CONFIGS:
            link = ETC / name
            if link.is_symlink():
                link.unlink()
            link.symlink_to(r / name)

    # ---- daemons ----
    def _start(self, name: str, *cmd: str) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")
        self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                            preexec_fn=_die_with_parent)

    def start(self) -> LocalSlurm:
        running = [pid for name in ("slurmctld", "slurmd", "slurmdbd")
                   for pid in subprocess.run(["pgrep", "-x", name], capture_output=True, text=True).stdout.split()]
        if running:
            raise RuntimeError(f"SLURM harness: SLURM daemons already run here (pids {' '.join(running)}), e.g. "
                               "left by an older harness's killed run: they hold SLURM's ports; stop them")
        self.write_configs()
        self._start("munged", "munged", "--foreground", "--force", f"--socket={self.munge_socket}",
                    f"--key-file={self.root}/munge/munge.key", f"--pid-file={self.root}/munge/munged.pid",
                    f"--log-file={self.root}/log/munged.log", f"--seed-file={self.root}/munge/seed")
        _wait(self.munge_socket.exists, "munged socket")
        subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={self.root}/db", "--user=root",
                        "--skip-test-db", "--auth-root-authentication-method=normal"], check=True,
                       capture_output=True)
        self._start("mariadb", "mariadbd", "--no-defaults", f"--datadir={self.root}/db", "--user=root",
                    f"--port={self.db_port}", "--bind-address=127.0.0.1", f"--socket={self.db_socket}",
                    "--skip-grant-tables")
        _wait(lambda: _port_open(self.db_port), "MariaDB")
        self._start("slurmdbd", "slurmdbd", "-D")
        _wait(lambda: _port_open(6819), "slurmdbd")
        subprocess.run(["sacctmgr", "-i", "add", "cluster", "tissuekd"], capture_output=True)
        self._start("slurmctld", "slurmctld", "-D", "-i")
        _wait(lambda: _ok("scontrol", "ping"), "slurmctld")
        self._start("slurmd", "slurmd", "-D")
        _wait(self.node_idle, "the node to show idle in sinfo")
        return self

    def node_idle(self) -> bool:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True).stdout.split()
        return out == ["idle"]

    def stop(self) -> None:
        for name in ("slurmd", "slurmctld", "slurmdbd", "mariadb", "munged"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for name in CONFIGS:
            link = ETC / name
            if link.is_symlink() and str(os.readlink(link)).startswith(str(self.root)):
                link.unlink()

    def sacct(self, *fields: str, steps: bool = False) -> list[dict]:
        """Finished and running jobs since the cluster started, as dicts of the given fields; with
        `steps`, their steps' rows too (`<job>.batch`, `<job>.0`: where MaxRSS is recorded)."""
        out = subprocess.run(["sacct", "-a", *([] if steps else ["-X"]), "-n", "-P", "-S", "now-1days",
                              "-o", ",".join(fields)], capture_output=True, text=True, check=True).stdout
        return [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line.strip()]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "start":
        sys.exit("usage: cluster.py start DIR  (runs until Ctrl-C or SIGTERM, then stops the daemons and "
                 "removes the /etc/slurm links)")
    reason = missing_reason()
    if reason:
        sys.exit(reason)
    cluster = LocalSlurm(Path(sys.argv[2]))
    # a backgrounded job ignores SIGINT: SIGTERM (kill PID) must clean up too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:  # a signal while starting stops what has started
        cluster.start()
        print(f"cluster up; daemons' PIDs: {[p.pid for p in cluster.procs.values()]}; stop it with Ctrl-C or "
              f"`kill {os.getpid()}`")
        signal.pause()
    finally:
        cluster.stop()
