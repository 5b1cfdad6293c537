"""Process entry of ``dspex worker``: ``python -m deployments.run_worker --pool NAME [...]``.

``dspex worker`` computes the worker's environment (`deployments.worker.worker_environment`) and
replaces itself with this module, so variables read at import time (``DSPY_CACHEDIR``, Prefect's
settings) are in place before DSPy or Prefect load, and the worker keeps the command's process id.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

import dspex.bootstrap  # noqa: F401  (defaults the Prefect environment before Prefect loads)

__all__ = ["main", "start_worker"]


async def start_worker(pool: str, name: str, worker_type: str, limit: int | None) -> None:
    """Run a worker of ``worker_type`` (``dspex`` or ``process``) on ``pool`` until it is stopped."""
    if worker_type == "dspex":
        from deployments.worker import DSPexWorker

        worker: object = DSPexWorker(pool, name=name, limit=limit, create_pool_if_not_found=False)
    else:
        from prefect.workers.process import ProcessWorker

        worker = ProcessWorker(pool, name=name, limit=limit, create_pool_if_not_found=False)
    await worker.start()  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments and run the worker."""
    parser = argparse.ArgumentParser(prog="dspex-worker")
    parser.add_argument("--pool", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--type", dest="worker_type", choices=("dspex", "process"), default="dspex")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument(
        "--append-path",
        action="append",
        default=[],
        help="A folder of the user's own modules (last on sys.path).",
    )
    args = parser.parse_args(argv)
    sys.path.extend(p for p in args.append_path if p not in sys.path)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a foreground worker is stopped
        asyncio.run(start_worker(args.pool, args.name, args.worker_type, args.limit))


if __name__ == "__main__":
    main()
