"""The ``health`` flow: run the health checks on a schedule and emit ``dspex.health.failed``.

Deployed from ``prefect.yaml`` with an interval schedule, it turns `tasks.health.check_health`
into something an automation can act on: when a check fails the flow emits ``dspex.health.failed``
(naming the failed checks) and ends Failed, so the UI shows red and a notification can follow.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.states import Completed, Failed

from flows.telemetry import events
from tasks.health import check_health

__all__ = ["health"]


@flow(name="health", description="Check the API, pools, workers, payload storage, registry and LM.")
def health(no_lm: bool = False) -> Any:
    """Run every health check; emit ``dspex.health.failed`` and fail when one fails.

    Args:
        no_lm: Skip the LM call (no tokens spent).

    Returns:
        A Completed state holding the report, or a Failed one naming the failed checks.
    """
    logger = get_run_logger()
    report = check_health(no_lm=no_lm)
    for check in report.checks:
        logger.info("%-18s %-4s %s", check.name, check.status, check.detail)
    data = report.model_dump(mode="json")
    if report.ok:
        return Completed(message="healthy", data=data)
    failed = [c.model_dump(mode="json") for c in report.failed]
    events.health_failed(failed, total=len(report.checks))
    names = ", ".join(c.name for c in report.failed)
    return Failed(message=f"{len(failed)} health check(s) failed: {names}", data=data)
