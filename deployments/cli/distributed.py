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
    from flows.pools import POOL_NAMES

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
    from flows.pools import POOL_NAMES

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
    env.setdefault("PYTHONPATH", str(Path.cwd()))
    args = [
        sys.executable,
        "-m",
        "deployments.run_worker",
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
) -> None:
    """Deploy everything in prefect.yaml (``prefect --no-prompt deploy --all``) to PREFECT_API_URL."""
    command = [
        sys.executable,
        "-m",
        "prefect",
        "--no-prompt",
        "deploy",
        "--all",
        "--prefect-file",
        str(project),
    ]
    raise typer.Exit(subprocess.call(command))  # noqa: S603  (fixed command, our interpreter)


def register(app: typer.Typer) -> None:
    """Add the distributed-mode commands to the ``dspex`` app."""
    app.add_typer(pools_app, name="pools")
    app.command("worker")(worker)
    app.command("serve")(serve)
    app.command("deploy")(deploy)
