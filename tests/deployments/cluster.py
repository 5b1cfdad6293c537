"""A real Prefect cluster on loopback for end-to-end tests: server, pools, deployments, workers.

Every process it starts is stopped by `Cluster.close` (terminate, then kill), which the fixtures call
in ``finally``. The server gets its own PREFECT_HOME; workers and the test share one payload folder.
Distributed mode's documented database is PostgreSQL (docs/deployment.md): `Postgres` runs Debian's
``postgresql`` on loopback in a throwaway data folder (``.ci/run`` installs it), as its own user when
the tests run as root, and `Cluster` points the server at it with
``PREFECT_API_DATABASE_CONNECTION_URL``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.ports import free_port

__all__ = ["REPO", "Cluster", "Postgres", "free_port", "server_tracebacks"]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


class Postgres:
    """A PostgreSQL server on loopback in a temporary data folder (trust auth, no fsync: tests only)."""

    def __init__(self) -> None:
        initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        if initdb is None or pg_ctl is None:
            reason = (
                "PostgreSQL is not installed (Debian: apt-get install -y postgresql; .ci/run installs it)"
            )
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(f"CI=true but {reason}")
            pytest.skip(reason)
        self.pg_ctl = pg_ctl
        # Not under pytest's tmp folder: PostgreSQL runs as its own user, which must reach the folder.
        self.root = Path(tempfile.mkdtemp(prefix="dspex-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            shutil.chown(self.root, "postgres", "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self._run([initdb, "-D", str(self.data), "-U", "prefect", "--auth=trust", "-E", "UTF8", "--no-sync"])
        options = (
            f"-k {self.root} -p {self.port} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        )
        self._run(
            [
                pg_ctl,
                "-D",
                str(self.data),
                "-o",
                options,
                "-l",
                str(self.root / "postgres.log"),
                "-w",
                "start",
            ]
        )
        self.url = f"postgresql+asyncpg://prefect@127.0.0.1:{self.port}/postgres"

    def _run(self, args: list[str]) -> None:
        done = subprocess.run([*self.as_user, *args], capture_output=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(
                f"{args[0]} failed: {(done.stdout + done.stderr).decode(errors='replace')[-2000:]}"
            )

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self._run([self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(self.root, ignore_errors=True)


def server_tracebacks(log: str) -> list[str]:
    """The tracebacks in a server log, each with a few lines of context (empty when clean)."""
    lines = log.splitlines()
    return ["\n".join(lines[max(i - 2, 0) : i + 12]) for i, line in enumerate(lines) if "Traceback" in line]


class Cluster:
    """A Prefect server with the dspex pools, run-step deployments and workers."""

    def __init__(
        self, root: Path, extra_env: dict[str, str] | None = None, database_url: str | None = None
    ) -> None:
        self.root = root
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.ui_url = f"http://127.0.0.1:{self.port}"
        self.payloads = root / "payloads"
        self.env = (
            {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DSPEX_"))}
            | {
                "PREFECT_HOME": str(root / "prefect-home"),
                "PREFECT_API_URL": self.api_url,
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
                "PREFECT_LOGGING_LEVEL": "WARNING",
                "DSPEX_HOME": str(root / "dspex-home"),
                "DSPEX_PAYLOAD_URL": str(self.payloads),
                "PYTHONPATH": str(REPO),
            }
            | ({"PREFECT_API_DATABASE_CONNECTION_URL": database_url} if database_url else {})
            | (extra_env or {})
        )
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def _spawn(self, key: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``args`` with the cluster's environment, plus ``env`` for this process only."""
        with open(self.logs / f"{key}.log", "wb") as log:  # the child keeps its own descriptor
            proc = subprocess.Popen(
                args,
                cwd=REPO,
                env=self.env | (env or {}),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs[key] = proc
        return proc

    def log(self, key: str, tail: int = 4000) -> str:
        path = self.logs / f"{key}.log"
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""

    def run(self, *args: str, timeout: float = 180) -> str:
        done = subprocess.run(
            list(args), cwd=REPO, env=self.env, capture_output=True, timeout=timeout, check=False
        )
        out = (done.stdout + done.stderr).decode(errors="replace")
        assert done.returncode == 0, f"{args} failed ({done.returncode}):\n{out[-3000:]}"
        return out

    def start_server(self, timeout: float = 120) -> None:
        self._spawn(
            "server",
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs["server"].poll() is not None:
                raise RuntimeError(f"prefect server exited:\n{self.log('server')}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as answer,
            ):  # noqa: S310
                if answer.status == 200:
                    return
            time.sleep(0.5)
        raise TimeoutError(f"prefect server not healthy after {timeout} s:\n{self.log('server')}")

    def setup(self, deployments: list[str]) -> None:
        """Create the pools (dspex type) and deploy the named prefect.yaml deployments."""
        self.run(str(BIN / "dspex"), "pools", "create")
        names = [arg for name in deployments for arg in ("-n", name)]
        self.run(str(BIN / "dspex"), "deploy", *names)  # records run-step ids: auto mode uses only those

    def setup_all(self) -> None:
        """Create the pools (dspex type) and deploy everything in prefect.yaml."""
        self.run(str(BIN / "dspex"), "pools", "create")
        self.run(str(BIN / "dspex"), "deploy", timeout=300)  # `prefect deploy --all`, ids recorded

    def start_prefect_worker(
        self, pool: str, name: str, *extra: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """``prefect worker start --pool POOL``: the command Prefect itself prints after a deploy.

        ``extra`` goes on its command line (``--work-queue default --work-queue mine``); ``env`` is
        added to this worker's environment only (``DSPEX_SESSION_AFFINITY_QUEUE``).
        """
        return self._spawn(
            f"worker-{name}",
            [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--name", name, *extra],
            env=env,
        )

    def start_worker(self, pool: str, name: str, *extra: str) -> subprocess.Popen[bytes]:
        args = [
            str(BIN / "dspex"),
            "worker",
            "--pool",
            pool,
            "--name",
            name,
            "--heartbeat-seconds",
            "2",
            *extra,
        ]
        return self._spawn(f"worker-{name}", args)

    def wait_workers(self, names: list[str], timeout: float = 90) -> None:
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        deadline = time.monotonic() + timeout
        with (
            temporary_settings(updates={PREFECT_API_URL: self.api_url}),
            get_client(sync_client=True) as client,
        ):
            while time.monotonic() < deadline:
                seen = {
                    w.name
                    for pool in ("general", "optimizer", "gpu")
                    for w in client.read_workers_for_work_pool(pool)
                }
                if set(names) <= seen:
                    return
                for key, proc in self.procs.items():
                    if key.startswith("worker-") and proc.poll() is not None:
                        raise RuntimeError(f"{key} exited:\n{self.log(key)}")
                time.sleep(0.5)
        raise TimeoutError(f"workers {names} did not register in {timeout} s")

    def kill(self, key: str) -> None:
        proc = self.procs[key]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def drain_api_workers(api_url: str) -> None:
    """Flush and stop Prefect's log and event workers bound to ``api_url`` while its server still runs.

    They are cached per API URL and outlive the test; left behind, the session harness's final
    ``drain_all`` waits forever on a server that is gone (pytest then hangs after the last test).
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        APILogWorker.instance().drain()
        EventsWorker.instance().drain()
