"""``dspex serve``: the user-facing deployments of ``prefect.yaml``, served from one process.

For users who want schedules and UI-triggered runs without work pools or workers: every deployment
in ``prefect.yaml`` except the ``run-step-*`` ones (those exist for workers) is built with
``flow.to_deployment`` (same name, description, parameters, tags and schedules) and served with
``prefect.serve``, which polls for and runs them in this process. A deployment whose flow cannot be
imported is reported and left out, so one broken flow does not stop the others.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

import dspex.bootstrap  # noqa: F401  (defaults the Prefect environment before Prefect loads)
from dspex.documents import load_document
from dspex.exceptions import ConfigurationError, SpecLimitError

__all__ = ["load_project", "runner_deployments", "serve_all", "user_facing_entries"]

logger = logging.getLogger("dspex.serve")


def load_project(path: Path | str = "prefect.yaml") -> dict[str, Any]:
    """``prefect.yaml`` parsed (YAML anchors resolved).

    Raises:
        ConfigurationError: The file is missing or is not a Prefect project file.
        SpecLimitError: It is larger, deeper or (anchors expanded) bigger than the loader's limits.
    """
    file = Path(path)
    try:  # bounded like every user document: anchors allowed, their expansion capped (issue 20)
        data = load_document(file.read_text(encoding="utf-8"), source=f"project file {str(file)!r}")
    except SpecLimitError:
        raise
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigurationError(f"cannot read project file {file}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("deployments"), list):
        raise ConfigurationError(f"{file} has no 'deployments:' list")
    return data


def user_facing_entries(project: dict[str, Any]) -> list[dict[str, Any]]:
    """The deployments users run (everything but the per-pool ``run-step-*`` ones)."""
    return [d for d in project["deployments"] if not str(d.get("name", "")).startswith("run-step-")]


def _schedules(entry: dict[str, Any]) -> list[Any]:
    from prefect.schedules import Cron, Interval

    found = []
    for schedule in entry.get("schedules") or []:
        active = bool(schedule.get("active", True))
        if "cron" in schedule:
            found.append(Cron(schedule["cron"], timezone=schedule.get("timezone"), active=active))
        elif "interval" in schedule:
            found.append(Interval(float(schedule["interval"]), active=active))
        else:
            raise ConfigurationError(
                f"deployment {entry.get('name')!r}: schedule {schedule} has no cron or interval"
            )
    return found


def runner_deployments(entries: list[dict[str, Any]]) -> list[Any]:
    """``RunnerDeployment``s for ``entries``; entries whose flow does not import are logged and skipped."""
    from prefect.flows import load_flow_from_entrypoint

    built = []
    for entry in entries:
        try:
            flow: Any = load_flow_from_entrypoint(entry["entrypoint"])
        except (ImportError, AttributeError, FileNotFoundError, ValueError) as exc:
            logger.error(
                "not serving %s: cannot load %s: %s", entry.get("name"), entry.get("entrypoint"), exc
            )
            continue
        built.append(
            flow.to_deployment(
                name=entry["name"],
                description=entry.get("description"),
                parameters=entry.get("parameters") or {},
                tags=entry.get("tags") or [],
                schedules=_schedules(entry),
            )
        )
    return built


def serve_all(path: Path | str = "prefect.yaml") -> None:
    """Serve every user-facing deployment of the project file until interrupted.

    Raises:
        ConfigurationError: No deployment could be loaded.
    """
    from prefect import serve

    deployments = runner_deployments(user_facing_entries(load_project(path)))
    if not deployments:
        raise ConfigurationError(f"no deployment of {path} could be loaded")
    serve(*deployments)
