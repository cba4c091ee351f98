"""The PostgreSQL HA cluster of scripts/ha-cluster.sh (etcd + three Patroni nodes), driven from tests.

Plain classes, no fixtures. Every wait is bounded and its error names what did not happen.
The cluster directory lives under /var/tmp: Patroni runs as the postgres user, who cannot enter
pytest's 0700 tmp directories.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql
from support import free_port

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "ha-cluster.sh"
NODE_COUNT = 3
# The script's own start timeout (HA_START_TIMEOUT_S) fires first and names the component.
SCRIPT_START_TIMEOUT_S = 180
START_TIMEOUT_S = SCRIPT_START_TIMEOUT_S + 30
COMMAND_TIMEOUT_S = 60.0
REST_TIMEOUT_S = 2.0
POLL_INTERVAL_S = 0.2


class HaClusterError(RuntimeError):
    pass


def _distinct_free_ports(count: int) -> list[int]:
    ports: list[int] = []
    for _ in range(count * 20):  # free_port may hand out a port twice in a row
        port = free_port()
        if port not in ports:
            ports.append(port)
        if len(ports) == count:
            return ports
    raise HaClusterError(f"could not find {count} distinct free ports")


def _new_base_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="tokenpay-ha-", dir="/var/tmp"))
    path.chmod(0o755)  # Patroni (the postgres user) must traverse it
    return path


@dataclass
class HaCluster:
    base_dir: Path
    pg_ports: list[int]
    rest_ports: list[int]
    etcd_ports: list[int]
    scope: str
    bootstrap_s: float = 0.0  # start until ready: a leader, a sync standby, every replica streaming

    # --- lifecycle ---------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        base_dir: Path | None = None,
        pg_ports: list[int] | None = None,
        rest_ports: list[int] | None = None,
        etcd_ports: list[int] | None = None,
    ) -> HaCluster:
        """Start a cluster in base_dir (absent or empty; default a new directory under /var/tmp).

        Ports default to free ones, so parallel runs do not clash. Returns once there is a leader,
        a synchronous standby and every replica is streaming.
        """
        ports = _distinct_free_ports(2 * NODE_COUNT + 2)
        cluster = cls(
            base_dir=Path(base_dir) if base_dir is not None else _new_base_dir(),
            pg_ports=list(pg_ports or ports[:NODE_COUNT]),
            rest_ports=list(rest_ports or ports[NODE_COUNT : 2 * NODE_COUNT]),
            etcd_ports=list(etcd_ports or ports[2 * NODE_COUNT :]),
            scope=f"tp-ha-{secrets.token_hex(4)}",
        )
        started_s = time.monotonic()
        try:
            cluster._script("start", timeout_s=START_TIMEOUT_S)
        except BaseException:
            # A half-started cluster leaves nothing behind; the start's error is the one to report.
            with contextlib.suppress(HaClusterError):
                cluster.stop()
            raise
        cluster.bootstrap_s = time.monotonic() - started_s
        return cluster

    def stop(self) -> None:
        """Kill every process of the cluster and remove its directory."""
        self._script("stop")

    def leftover_processes(self) -> list[str]:
        """Processes of this cluster still alive: by path, and PostgreSQL's by their title (cluster_name)."""
        base_dir, title = str(self.base_dir), f"postgres: {self.scope}: "
        found = []
        for cmdline_path in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                command = cmdline_path.read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:  # exited while we looked
                continue
            if base_dir in command or command.startswith(title):
                found.append(f"{cmdline_path.parent.name} {command}")
        return found

    # --- addresses ---------------------------------------------------------------------

    @property
    def nodes(self) -> list[str]:
        return [f"pg{index}" for index in range(1, NODE_COUNT + 1)]

    def url(self, dbname: str = "postgres") -> str:
        """The multi-host SQLAlchemy URL: psycopg tries the nodes in order and keeps the writable one."""
        return self._script("url", dbname).strip()

    def node_port(self, name: str) -> int:
        return self.pg_ports[self.nodes.index(name)]

    def node_url(self, name: str, dbname: str = "postgres") -> str:
        """A SQLAlchemy URL of one node, primary or standby (reads on a standby see replayed data)."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.node_port(name)}/{dbname}?connect_timeout=2"

    def connect_node(self, name: str, dbname: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(
            host="127.0.0.1",
            port=self.node_port(name),
            user="postgres",
            dbname=dbname,
            connect_timeout=2,
            autocommit=True,
        )

    def create_database(self, name: str) -> str:
        """CREATE DATABASE on the leader; returns its multi-host SQLAlchemy URL."""
        with self.connect_node(self.leader()) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    # --- Patroni's view ----------------------------------------------------------------

    def members(self) -> list[dict]:
        """Each member as Patroni's REST API reports it: name, role, state, lag (bytes; None on the leader).

        Patroni's view trails by up to a loop: a member just restarted may still show state "stopped".
        """
        return [
            {
                "name": member["name"],
                "role": member["role"],
                "state": member.get("state", ""),
                "lag": member.get("lag"),
                "timeline": member.get("timeline"),
            }
            for member in self._cluster_json()["members"]
        ]

    def leader(self) -> str:
        for member in self.members():
            if member["role"] == "leader":
                return member["name"]
        raise HaClusterError(f"the cluster has no leader now: {self.members()}")

    def sync_standby(self) -> str | None:
        return next((m["name"] for m in self.members() if m["role"] == "sync_standby"), None)

    # --- node loss and return ----------------------------------------------------------

    def kill_node(self, name: str) -> float:
        """Node loss: kill -9 the node's Patroni, postmaster and backends; returns time.monotonic() after."""
        self._script("kill-node", name)
        return time.monotonic()

    def start_node(self, name: str) -> None:
        """Restart the node's Patroni; it rejoins as a replica (rewound by pg_rewind if it had diverged)."""
        self._script("start-node", name)

    def switchover(self, candidate: str | None = None, timeout_s: float = 60.0) -> str:
        """Planned switchover (patronictl switchover --force); returns the new leader once it is writable.

        In synchronous mode Patroni hands over only to the synchronous standby: another candidate is refused.
        """
        # Right after a failover or switchover there is no synchronous standby yet; Patroni refuses then.
        self.wait_sync_standby(timeout_s=timeout_s)
        old = self.leader()
        args = ["switchover", "--force", "--leader", old]
        if candidate:
            args += ["--candidate", candidate]
        output = self._patronictl(*args)
        # patronictl exits 0 even when Patroni refuses ("Switchover failed, details: 412, ...").
        if "Successfully" not in output:
            raise HaClusterError(f"switchover from {old} refused: {output.strip().splitlines()[-1]}")
        new = self.wait_leader(not_name=old, timeout_s=timeout_s)
        if candidate and new != candidate:
            raise HaClusterError(f"switchover to {candidate} made {new} the leader")
        return new

    # --- bounded waits -----------------------------------------------------------------

    def wait_leader(self, not_name: str | None = None, timeout_s: float = 60.0) -> str:
        """Wait until a leader other than not_name runs and is out of recovery; returns its name."""
        deadline = time.monotonic() + timeout_s
        seen = "no answer yet"
        while time.monotonic() < deadline:
            try:
                members = self.members()
                seen = str(members)
                leader = next((m for m in members if m["role"] == "leader" and m["state"] == "running"), None)
                if leader and leader["name"] != not_name and self._is_primary(leader["name"]):
                    return leader["name"]
            except (HaClusterError, psycopg.Error) as error:
                seen = str(error)
            time.sleep(POLL_INTERVAL_S)
        other = f" other than {not_name}" if not_name else ""
        raise HaClusterError(f"no writable leader{other} within {timeout_s} s; last seen: {seen}")

    def wait_sync_standby(self, timeout_s: float = 60.0) -> str:
        """Wait until Patroni names a synchronous standby (strict mode: commits wait for it); returns it."""
        deadline = time.monotonic() + timeout_s
        seen = "no answer yet"
        while time.monotonic() < deadline:
            try:
                members = self.members()
                seen = str(members)
                sync = next((m["name"] for m in members if m["role"] == "sync_standby"), None)
                if sync:
                    return sync
            except HaClusterError as error:
                seen = str(error)
            time.sleep(POLL_INTERVAL_S)
        raise HaClusterError(f"no synchronous standby within {timeout_s} s; last seen: {seen}")

    def wait_streaming(self, count: int, timeout_s: float = 60.0) -> list[str]:
        """Wait until count replicas stream from the leader with everything it had written when called.

        Lag 0 against a moving target never holds under load, so the target is the leader's WAL
        position at the call (taken again if the leader changes). Returns the replicas' names.
        """
        deadline = time.monotonic() + timeout_s
        target: tuple[str, str] | None = None  # (leader, lsn)
        seen = "no answer yet"
        while time.monotonic() < deadline:
            try:
                leader = self.leader()
                with self.connect_node(leader) as conn:
                    if target is None or target[0] != leader:
                        target = (leader, str(conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]))
                    rows = conn.execute(
                        "SELECT application_name, sync_state, replay_lsn >= %s::pg_lsn"
                        " FROM pg_stat_replication WHERE state = 'streaming' ORDER BY application_name",
                        (target[1],),
                    ).fetchall()
                caught_up = [name for name, _, done in rows if done]
                seen = f"leader {leader} at {target[1]}; streaming: {[(n, s, d) for n, s, d in rows]}"
                if len(caught_up) >= count:
                    return caught_up
            except (HaClusterError, psycopg.Error) as error:
                seen = str(error).strip()
            time.sleep(POLL_INTERVAL_S)
        raise HaClusterError(
            f"{count} replicas did not stream and catch up within {timeout_s} s; last seen: {seen}"
        )

    # --- plumbing ----------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            HA_DIR=str(self.base_dir),
            HA_PG_PORTS=" ".join(map(str, self.pg_ports)),
            HA_REST_PORTS=" ".join(map(str, self.rest_ports)),
            HA_ETCD_PORTS=" ".join(map(str, self.etcd_ports)),
            HA_SCOPE=self.scope,
            HA_START_TIMEOUT_S=str(SCRIPT_START_TIMEOUT_S),
        )
        return env

    def _script(self, *args: str, timeout_s: float = COMMAND_TIMEOUT_S) -> str:
        try:
            result = subprocess.run(
                ["bash", str(SCRIPT), *args],
                env=self._env(),
                capture_output=True,
                text=True,
                timeout=timeout_s,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as error:
            raise HaClusterError(
                f"ha-cluster.sh {' '.join(args)} did not finish within {timeout_s} s"
            ) from error
        if result.returncode != 0:
            raise HaClusterError(
                f"ha-cluster.sh {' '.join(args)} failed (exit {result.returncode}):\n{result.stderr.strip()}"
            )
        return result.stdout

    def _patronictl(self, *args: str) -> str:
        config = self.base_dir / self.nodes[0] / "patroni.yml"
        command = ["patronictl", "-c", str(config), *args]
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, stdin=subprocess.DEVNULL
        )
        if result.returncode != 0:
            raise HaClusterError(f"{' '.join(command)} failed: {(result.stderr or result.stdout).strip()}")
        return result.stdout

    def _cluster_json(self) -> dict:
        """GET /cluster from the first Patroni that answers (any member reports the whole cluster)."""
        errors = []
        for port in self.rest_ports:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/cluster", timeout=REST_TIMEOUT_S
                ) as response:
                    return json.load(response)
            except (OSError, urllib.error.URLError, ValueError) as error:
                errors.append(f"{port}: {error}")
        raise HaClusterError(f"no Patroni REST API answers: {'; '.join(errors)}")

    def _is_primary(self, name: str) -> bool:
        with self.connect_node(name) as conn:
            return conn.execute("SELECT NOT pg_is_in_recovery()").fetchone()[0]


@contextlib.contextmanager
def running_cluster(base_dir: Path | None = None) -> Iterator[HaCluster]:
    """A started cluster that is always stopped (and its directory removed) on the way out."""
    cluster = HaCluster.start(base_dir)
    try:
        yield cluster
    finally:
        cluster.stop()
