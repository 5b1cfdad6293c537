"""The execution-mode decision: run a pipeline's steps here, or dispatch them to their work pools.

Every orchestrating flow (run-pipeline, rag-qa, batch-predict) takes ``mode``: ``auto`` (the
default), ``local`` or ``distributed``. ``local`` and ``distributed`` are obeyed as given; so is
``DSPEX_MODE`` when it is set and the flow's mode is ``auto``. Otherwise ``auto`` asks the Prefect
API, once per run, whether the pools the steps need can take work: a pool can when it exists, is
not paused, has its ``run-step-<pool>`` deployment and a worker that heartbeated recently (the same
check distributed dispatch uses, `flows.engine.distributed.pool_status`), and that pool and deployment
are ones this project created (`flows.engine.ownership`: ``dspex pools create`` and ``dspex deploy`` record
their ids; another account's pool ``general`` with a ``run-step`` deployment and a worker of its own
must not receive the user's batches, issue 23). A needed pool (or ``general``) of that name that is
not the project's own makes the whole run local, with one log line naming it, so that no step
reaches it through the fallback either.

* every needed pool can take work -> ``distributed``;
* the general pool can and ``DSPEX_FALLBACK_POLICY=general`` -> ``distributed``; the router then
  sends the steps of the pools that cannot to the general pool, each with a log line;
* otherwise -> ``local``, with one log line naming each pool and why it cannot take work.

So a run started from the Prefect UI or a schedule routes its steps to ``general`` / ``optimizer``
/ ``gpu`` when the cluster is there, and still completes on a single machine when it is not. A
batch running *inside* a run-step never reaches this decision: the run-step flow executes its batch
on its own pool's executor (`flows.engine.step_runner.execute_step_batch`) and never dispatches.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from dspex.settings import Mode, Settings

__all__ = ["ModeDecision", "RunMode", "needed_pools", "resolve_mode"]

#: The ``mode`` parameter of the orchestrating flows (a choice in the Run form).
RunMode = Literal["auto", "local", "distributed"]

logger = logging.getLogger("dspex.modes")


@dataclass(frozen=True)
class ModeDecision:
    """The mode a run uses, and why (logged by the flow).

    Attributes:
        mode: ``local`` or ``distributed``.
        reason: One line for the run's log.
        unavailable: Pool name -> why it cannot take work (``auto`` only; empty otherwise).
    """

    mode: Mode
    reason: str
    unavailable: dict[str, str] = field(default_factory=dict)


def needed_pools(steps: list[Any], settings: Settings) -> list[str]:
    """The pools the registry (or the steps themselves) name for the routed steps, in first-use order."""
    from flows.engine.router import route_step
    from flows.engine.spec import ModuleStep, RetrieveStep, iter_steps

    pools: list[str] = []
    for step in iter_steps(steps):
        if isinstance(step, ModuleStep | RetrieveStep):
            pool = route_step(step, 1, settings, lambda _pool: (True, "")).requested_pool
            if pool not in pools:
                pools.append(pool)
    return pools


def resolve_mode(
    requested: RunMode | None,
    settings: Settings,
    pools: list[str],
    client: Any = None,
) -> ModeDecision:
    """Decide the mode of one run (see the module docstring).

    Args:
        requested: The flow's ``mode`` parameter (None means ``auto``).
        settings: The run's settings (``mode`` counts only when set explicitly, e.g. ``DSPEX_MODE``;
            ``worker_grace_seconds`` and ``fallback_policy`` shape the check).
        pools: The pools the run's steps need (`needed_pools`).
        client: A synchronous Prefect client (default: one for the current API).
    """
    if requested in ("local", "distributed"):
        return ModeDecision(requested, f"mode {requested!r} requested by the run's parameters")
    if "mode" in settings.model_fields_set:
        return ModeDecision(settings.mode, f"mode {settings.mode!r} from DSPEX_MODE")
    if not pools:
        return ModeDecision("local", "mode auto: no step runs on a pool (native steps only): local")
    if client is None:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as owned:
            return _probe(settings, pools, owned)
    return _probe(settings, pools, client)


def _probe(settings: Settings, pools: list[str], client: Any) -> ModeDecision:
    from flows.engine.distributed import pool_status
    from flows.engine.ownership import load_owned

    owned = load_owned(settings)
    probe = list(dict.fromkeys([*pools, "general"] if settings.fallback_policy == "general" else pools))
    unavailable: dict[str, str] = {}
    foreign = False
    for pool in probe:
        try:
            status = pool_status(client, pool, owned=owned)
        except Exception as exc:  # an API that cannot answer (ephemeral server, network): run here
            unavailable[pool] = f"the Prefect API did not answer ({type(exc).__name__}: {exc})"
            continue
        if not status.ok:
            unavailable[pool] = status.reason
            foreign = foreign or status.foreign
    if foreign:  # never distributed: the router's fallback would still reach that pool's workers
        return ModeDecision(
            "local",
            "mode auto: running every step in this process ("
            + "; ".join(f"{p}: {why}" for p, why in unavailable.items())
            + ")",
            unavailable,
        )
    needed_down = [p for p in pools if p in unavailable]
    if not needed_down:
        return ModeDecision(
            "distributed", f"mode auto: pools {pools} have live run-step workers: distributed"
        )
    if "general" not in unavailable and settings.fallback_policy == "general":
        return ModeDecision(
            "distributed",
            f"mode auto: distributed; pools {needed_down} cannot take work, their steps fall back to "
            "'general' (" + "; ".join(f"{p}: {unavailable[p]}" for p in needed_down) + ")",
            unavailable,
        )
    return ModeDecision(
        "local",
        "mode auto: running every step in this process ("
        + "; ".join(f"{p}: {why}" for p, why in unavailable.items())
        + "); start `dspex worker --pool NAME` per pool to dispatch",
        unavailable,
    )
