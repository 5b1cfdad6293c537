"""``dspex registry stats``: what the registry has learned from runs, per module and pool."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["register", "registry_stats", "stats"]


def registry_stats(include_unused: bool = False) -> list[dict[str, object]]:
    """One row per module (used ones only unless ``include_unused``): calls, failures, failure rate,
    p50/p95 duration of recent successful calls, and the per-call estimate on each pool with its
    source (``learned`` from observed runs, or the catalogue's ``static`` value) and sample count."""
    from flows.engine.pools import POOL_NAMES
    from registry import default_registry

    registry = default_registry()
    rows: list[dict[str, object]] = []
    for name in registry.names():
        usage = registry.usage_stats(name)
        estimates = {pool: registry.estimate(name, pool=pool) for pool in POOL_NAMES}
        learned = any(e.source == "learned" or e.samples for e in estimates.values())
        if not include_unused and usage.calls == 0 and not learned:
            continue
        rows.append(
            {
                "module": name,
                "pool": registry.get_pool_type(name).value,
                "calls": usage.calls,
                "failures": usage.failures,
                "failure_rate": round(usage.failure_rate, 4),
                "p50_ms": usage.p50_ms,
                "p95_ms": usage.p95_ms,
                "estimates": {
                    pool: {"ms": e.ms, "source": e.source, "samples": e.samples}
                    for pool, e in estimates.items()
                },
            }
        )
    return rows


def stats(
    include_unused: bool = typer.Option(False, "--all", help="Also list modules no run has used."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """The registry's learned figures: calls, failure rate, p50/p95 and the estimate per pool."""
    rows = registry_stats(include_unused)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="Registry: learned figures per module and pool")
    for column in ("module", "pool", "calls", "fail %", "p50 ms", "p95 ms", "general", "optimizer", "gpu"):
        table.add_column(column, no_wrap=True, justify="left" if column in ("module", "pool") else "right")
    for row in rows:
        estimates = row["estimates"]
        assert isinstance(estimates, dict)
        cells = [
            f"{e['ms']:,} {'L' if e['source'] == 'learned' else 'S'}({e['samples']})"
            for e in estimates.values()
        ]
        table.add_row(
            str(row["module"]),
            str(row["pool"]),
            str(row["calls"]),
            f"{float(str(row['failure_rate'])) * 100:.1f}",
            "-" if row["p50_ms"] is None else f"{row['p50_ms']:.1f}",
            "-" if row["p95_ms"] is None else f"{row['p95_ms']:.1f}",
            *cells,
        )
    console = Console()
    console.print(table)
    if not rows:
        console.print("no module has been used yet (run a pipeline first, or pass --all)")
    else:
        console.print("estimates per call: L = learned from runs, S = static catalogue value (samples)")


def register(registry_app: typer.Typer) -> None:
    """Add ``stats`` to ``dspex registry``."""
    registry_app.command("stats")(stats)
