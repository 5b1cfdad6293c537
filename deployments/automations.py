"""Example Prefect automations on DSPex events, created (or updated) idempotently by name.

=================================  =================================  ===================================
automation                         trigger                            actions
=================================  =================================  ===================================
``dspex: breaker opened``          ``dspex.breaker.opened``           pause the deployment of the run that
                                                                      emitted it (its schedules stop), and
                                                                      notify through the block, if given
``dspex: estimate drift``          ``dspex.estimate.drift``           notify through the block (created only
                                                                      when a notification block is given)
``dspex: health failed``           ``dspex.health.failed``            notify through the block (idem)
=================================  =================================  ===================================

Pausing uses Prefect's ``inferred`` deployment: the server takes it from the triggering event's related
resources, which Prefect's events worker fills in from the run context (flow run, deployment, work
pool). An event emitted outside a deployment's run names no deployment, and the pause is a no-op there.
Notifications go through an existing Prefect notification block (Slack, e-mail, a custom webhook...),
named ``<block-type-slug>/<block-name>`` (e.g. ``slack-webhook/ops``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict

import dspex.bootstrap  # noqa: F401  (defaults the Prefect environment before Prefect loads)
from dspex.exceptions import ConfigurationError

__all__ = ["AUTOMATION_NAMES", "AutomationResult", "build_automations", "ensure_automations"]

BREAKER = "dspex: breaker opened"
DRIFT = "dspex: estimate drift"
HEALTH = "dspex: health failed"
#: The automations `ensure_automations` manages.
AUTOMATION_NAMES = (BREAKER, DRIFT, HEALTH)

_BREAKER_BODY = (
    "DSPex: the circuit breaker of LM endpoint {{ event.payload.endpoint }} opened after "
    "{{ event.payload.failures }} consecutive transport failures. The deployment of the run was "
    "paused; resume it once the provider is healthy."
)
_DRIFT_BODY = (
    "DSPex: step {{ event.resource['prefect.resource.name'] }} ({{ event.payload.module }} on pool "
    "{{ event.payload.pool }}) took {{ event.payload.actual_ms }} ms, {{ event.payload.ratio }}x its "
    "estimate of {{ event.payload.estimated_ms }} ms."
)
_HEALTH_BODY = "DSPex health: checks failed: {{ event.resource['dspex.failed'] }}."


class AutomationResult(BaseModel):
    """What `ensure_automations` did with one automation."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    action: Literal["created", "updated", "skipped"]
    id: UUID | None = None
    detail: str = ""


def _trigger(event: str) -> Any:
    from prefect.events.schemas.automations import EventTrigger, Posture

    # Reactive, one event is enough, evaluated per primary resource (a pool, a step). `type` is set
    # explicitly on triggers and actions: Prefect's client sends updates with exclude_unset, and a
    # union member without its `type` is parsed by the server as the first that fits (measured: a
    # pause-deployment action came back as run-deployment after an update).
    return EventTrigger(
        type="event",
        expect={event},
        match={"prefect.resource.id": "dspex.*"},
        for_each={"prefect.resource.id"},
        posture=Posture.Reactive,
        threshold=1,
        within=timedelta(seconds=0),
    )


def build_automations(notify_block_id: UUID | None = None) -> tuple[list[Any], list[AutomationResult]]:
    """The automations to create, and the ones skipped (with why).

    Args:
        notify_block_id: A notification block document to notify through; None: no notifications.
    """
    from prefect.events.actions import PauseDeployment, SendNotification
    from prefect.events.schemas.automations import AutomationCore

    def notify(subject: str, body: str) -> list[Any]:
        if notify_block_id is None:
            return []
        return [
            SendNotification(
                type="send-notification", block_document_id=notify_block_id, subject=subject, body=body
            )
        ]

    automations = [
        AutomationCore(
            name=BREAKER,
            description="Pause the deployment whose run opened a pool's circuit breaker (and notify).",
            trigger=_trigger("dspex.breaker.opened"),
            actions=[
                PauseDeployment(type="pause-deployment", source="inferred", deployment_id=None),
                *notify("DSPex: breaker opened", _BREAKER_BODY),
            ],
        )
    ]
    skipped = []
    for name, event, subject, body in (
        (DRIFT, "dspex.estimate.drift", "DSPex: estimate drift", _DRIFT_BODY),
        (HEALTH, "dspex.health.failed", "DSPex: health check failed", _HEALTH_BODY),
    ):
        if notify_block_id is None:
            skipped.append(
                AutomationResult(
                    name=name, action="skipped", detail="needs a notification block (--notify-block)"
                )
            )
            continue
        automations.append(
            AutomationCore(
                name=name,
                description=f"Notify on {event}.",
                trigger=_trigger(event),
                actions=notify(subject, body),
            )
        )
    return automations, skipped


def _block_id(client: Any, notify_block: str) -> UUID:
    from prefect.exceptions import ObjectNotFound

    slug, sep, name = notify_block.partition("/")
    if not sep or not slug or not name:
        raise ConfigurationError(
            f"notification block {notify_block!r} must be '<block-type-slug>/<name>', e.g. 'slack-webhook/ops'"
        )
    try:
        document = client.read_block_document_by_name(name=name, block_type_slug=slug)
    except ObjectNotFound:
        raise ConfigurationError(
            f"no notification block {notify_block!r} on the server (create it in the UI: Blocks)"
        ) from None
    return UUID(str(document.id))


def ensure_automations(notify_block: str | None = None, client: Any = None) -> list[AutomationResult]:
    """Create the example automations, or update the ones that exist (matched by name).

    Args:
        notify_block: ``<block-type-slug>/<name>`` of a notification block; None: no notifications
            (the drift and health automations are then skipped).
        client: A synchronous Prefect client (default: one for ``PREFECT_API_URL``).

    Raises:
        ConfigurationError: The notification block is malformed or does not exist.
    """
    if client is None:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as owned:
            return ensure_automations(notify_block, owned)
    block_id = _block_id(client, notify_block) if notify_block else None
    automations, results = build_automations(block_id)
    for automation in automations:
        existing = client.read_automations_by_name(automation.name)
        if existing:
            first, *duplicates = existing
            client.update_automation(first.id, automation)
            for extra in duplicates:  # an earlier race or hand-made copy: one automation per name
                client.delete_automation(extra.id)
            results.append(AutomationResult(name=automation.name, action="updated", id=first.id))
        else:
            created = client.create_automation(automation)
            results.append(AutomationResult(name=automation.name, action="created", id=created))
    order = {name: i for i, name in enumerate(AUTOMATION_NAMES)}
    return sorted(results, key=lambda r: order.get(r.name, len(order)))
