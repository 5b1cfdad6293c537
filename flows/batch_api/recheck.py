"""Waiting for a provider batch without holding a worker: end the flow run, re-check it later (issue 21).

A deployment's own flow run that reaches a pending batch ends in a ``Completed`` state named
``AwaitingBatch`` (`awaiting_batch`), after scheduling a run of the same deployment with the same
parameters at the next check (`schedule_recheck`); that run replays what is answered, finds the
job's saved state (`flows.batch_api.jobs`) and goes on. No process waits in between.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from dspex.exceptions import LMBatchPendingError

__all__ = ["awaiting_batch", "deployment_run", "schedule_recheck"]

logger = logging.getLogger("dspex.batch_mode")


def deployment_run() -> Any:
    """The current flow run when it is a deployment's own run (not a subflow, not a Python call)."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    run = getattr(context, "flow_run", None)
    return run if run is not None and run.deployment_id is not None else None


def awaiting_batch(pending: LMBatchPendingError) -> Any:
    """The final state of a flow run that stops at a pending batch: ``Completed`` named
    ``AwaitingBatch`` whose result is ``pending``, after scheduling the re-check when the run is a
    deployment's own (a subflow's caller, `flows.batch_predict`, schedules its own)."""
    from prefect.states import Completed

    recheck = schedule_recheck(pending)
    message = str(pending) + (f"; re-check scheduled as flow run {recheck}" if recheck else "")
    return Completed(name="AwaitingBatch", message=message, data=pending)


def schedule_recheck(pending: LMBatchPendingError) -> str | None:
    """From a deployment's flow run: schedule a run of the same deployment with the same parameters
    when the pending batch is due for its next check; returns the new run's id (None outside a
    deployment run). The idempotency key (job, batch, check time bucket) keeps a retried flow run
    from scheduling the same re-check twice."""
    from prefect.deployments import run_deployment

    run = deployment_run()
    if run is None:
        return None
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=pending.check_in_s)
    recheck: Any = run_deployment(  # sync: this runs inside a sync flow
        name=run.deployment_id,
        parameters=dict(run.parameters or {}),  # as the server holds them: JSON
        scheduled_time=when,
        timeout=0,
        as_subflow=False,
        idempotency_key=f"{run.id}-recheck-{pending.batch_id}",
        flow_run_name=f"{str(run.name)[:40]}-recheck",
        tags=["dspex-batch-recheck"],
    )
    logger.info(
        "batch %s pending: re-check scheduled as flow run %s at %s", pending.batch_id, recheck.id, when
    )
    return str(recheck.id)
