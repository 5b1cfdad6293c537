"""``dspex pools create``, ``dspex worker``, ``dspex serve`` and ``dspex deploy``: distributed mode."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["deploy", "pools_app", "pools_create", "register", "serve", "worker"]

console = Console()
pools_app = typer.Typer(
    help="Work pools of distributed mode (general, optimizer, gpu).", no_args_is_help=True
)


@pools_app.command("create")
def pools_create(
    worker_type: str = typer.Option(
        "dspex",
        "--type",
        help="dspex (warm worker processes, fast dispatch) or process (one Python per run).",
    ),
    pool: list[str] = typer.Option([], "--pool", help="Only this pool (repeatable); default all three."),
) -> None:
    """Create the work pools, or update their concurrency limits (idempotent)."""
    from deployments.pools import ensure_pools
    from dspex.exceptions import ConfigurationError
    from flows.engine.pools import POOL_NAMES

    if worker_type not in ("dspex", "process"):
        raise typer.BadParameter("must be 'dspex' or 'process'", param_hint="--type")
    try:
        results = ensure_pools(worker_type=worker_type, pools=tuple(pool) or POOL_NAMES)  # type: ignore[arg-type]
    except ConfigurationError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    table = Table(title=f"Work pools on {os.environ.get('PREFECT_API_URL') or 'the embedded server'}")
    for column in ("pool", "type", "concurrency limit", "action"):
        table.add_column(column)
    for result in results:
        table.add_row(result.name, result.type, str(result.concurrency_limit), result.action)
    console.print(table)
    if os.environ.get("PREFECT_API_URL"):  # a server for workers: say once if it cannot hold them (issue 20)
        from prefect.client.orchestration import get_client

        from deployments.database import sqlite_warning

        with get_client(sync_client=True) as client:
            warning = sqlite_warning(client, [result.name for result in results])
        if warning:
            console.print(f"[yellow]warning:[/yellow] {warning}")


def worker(
    pool: str = typer.Option(..., "--pool", help="The pool to serve: general, optimizer or gpu."),
    name: str | None = typer.Option(None, help="Worker name (default: <pool>-<host>-<pid>)."),
    worker_type: str = typer.Option("dspex", "--type", help="dspex (warm, default) or process."),
    limit: int | None = typer.Option(
        None, help="Most flow runs at once in this worker (default: pool capacity)."
    ),
    query_seconds: float = typer.Option(0.5, help="How often to ask for work (Prefect's default: 15 s)."),
    heartbeat_seconds: int = typer.Option(
        5, help="Heartbeat interval; a dead worker is noticed after 3 misses."
    ),
    gpus: str | None = typer.Option(None, help="CUDA_VISIBLE_DEVICES for a gpu worker (default: inherited)."),
) -> None:
    """Start a worker for one pool with that pool's environment (replaces this process)."""
    from deployments.worker import WorkerOptions, worker_environment
    from dspex.settings import get_settings
    from flows.engine.pools import POOL_NAMES

    if pool not in POOL_NAMES:
        raise typer.BadParameter(
            f"unknown pool {pool!r}; pools are {', '.join(POOL_NAMES)}", param_hint="--pool"
        )
    if worker_type not in ("dspex", "process"):
        raise typer.BadParameter("must be 'dspex' or 'process'", param_hint="--type")
    if not os.environ.get("PREFECT_API_URL"):
        console.print(
            "[red]error:[/red] PREFECT_API_URL is not set; a worker needs a Prefect server (docs/deployment.md)"
        )
        raise typer.Exit(2)
    settings = get_settings()
    worker_name = name or f"{pool}-{socket.gethostname()}-{os.getpid()}"
    options = WorkerOptions(
        pool, worker_name, query_seconds=query_seconds, heartbeat_seconds=heartbeat_seconds, gpus=gpus
    )
    env = worker_environment(options, settings)
    # The worker imports the user's own modules (pkg.mod:Program) from this folder, *after* the
    # installed packages: on PYTHONPATH (or first, as `python -m` puts it) a tasks/ or flows/ here
    # would replace the product's own code in the worker (issue 23).
    args = [
        sys.executable,
        "-P",
        "-m",
        "deployments.run_worker",
        "--append-path",
        str(Path.cwd()),
        "--pool",
        pool,
        "--name",
        worker_name,
        "--type",
        worker_type,
    ]
    args += ["--limit", str(limit if limit is not None else max(settings.pool_capacity(pool), 1))]
    console.print(
        f"worker {worker_name!r} ({worker_type}) for pool {pool!r}; DSPY_CACHEDIR={env['DSPY_CACHEDIR']}"
    )
    sys.stdout.flush()
    os.execve(sys.executable, args, env)  # noqa: S606  (our own interpreter, fixed arguments)


def serve(
    project: Path = typer.Option(Path("prefect.yaml"), help="The prefect.yaml whose deployments to serve."),
) -> None:
    """Serve every user-facing deployment of prefect.yaml from this process (schedules, no workers)."""
    from deployments.serve import serve_all

    serve_all(project)


def deploy(
    project: Path = typer.Option(Path("prefect.yaml"), help="The project file."),
    name: list[str] = typer.Option(
        [], "--name", "-n", help="Only this deployment of prefect.yaml (repeatable); default all."
    ),
) -> None:
    """Deploy prefect.yaml (``prefect --no-prompt deploy --all``, or ``-n NAME``) to PREFECT_API_URL.

    The ``run-step`` deployments it makes are recorded as this project's own (`flows.engine.ownership`):
    auto mode dispatches only to those (issue 23).
    """
    command = [
        sys.executable,
        "-P",  # the project folder is read by path (prefect.yaml's entrypoints), never imported first
        "-m",
        "prefect",
        "--no-prompt",
        "deploy",
        *([arg for each in name for arg in ("-n", each)] or ["--all"]),
        "--prefect-file",
        str(project),
    ]
    code = subprocess.call(command)  # noqa: S603  (fixed command, our interpreter)
    if code == 0:
        for deployment in _record_run_steps(name):
            console.print(f"recorded {deployment} as this project's own (auto mode dispatches to it)")
    raise typer.Exit(code)


def _record_run_steps(names: list[str]) -> list[str]:
    """Record the ids of the ``run-step`` deployments this deploy just made (all of them, or those
    among ``names``); their names. Another deployment of the same name was overwritten by it."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from flows.engine.distributed import RUN_STEP_DEPLOYMENT
    from flows.engine.ownership import record_owned
    from flows.engine.pools import POOL_NAMES

    recorded = []
    with get_client(sync_client=True) as client:
        for pool in POOL_NAMES:
            deployment_name = RUN_STEP_DEPLOYMENT.format(pool=pool)
            if names and not {deployment_name, deployment_name.split("/")[-1]} & set(names):
                continue  # not deployed now: whoever made it, this command did not
            try:
                found = client.read_deployment_by_name(deployment_name)
            except ObjectNotFound:
                continue
            if found.work_pool_name == pool:
                record_owned("deployments", found.id, deployment_name)
                recorded.append(deployment_name)
    return recorded


def register(app: typer.Typer) -> None:
    """Add the distributed-mode commands to the ``dspex`` app."""
    app.add_typer(pools_app, name="pools")
    app.command("worker")(worker)
    app.command("serve")(serve)
    app.command("deploy")(deploy)
