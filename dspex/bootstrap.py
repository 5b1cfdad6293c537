"""Make the embedded Prefect default project-local and quiet; import this before Prefect.

Importing this module (the packages that use Prefect do it first) applies `configure_prefect`
once. It only *defaults* variables the user has not set, so ``PREFECT_HOME``, ``PREFECT_API_URL`` or
any ``PREFECT_*`` setting given by the user always wins, and pointing ``PREFECT_API_URL`` at a
server switches every flow to it without a code change.

What it sets, and why:

* ``PREFECT_HOME`` to ``<DSPEX_HOME>/prefect`` (when no server URL is given), so runs, the SQLite
  database and logs of the embedded server stay in the project instead of ``~/.prefect``.
* The Prefect home is created owner-only (0700) and its ``prefect.db`` 0600: the database holds
  every run's parameters, logs and artifacts.
* ``PREFECT_SERVER_ANALYTICS_ENABLED=false``: otherwise every start logs a failed network call.
* ``PREFECT_SERVER_LOGGING_LEVEL=CRITICAL`` for the embedded server only: at interpreter exit it
  is stopped while its event recorder flushes, which prints ``CancelledError`` tracebacks about work
  that is already persisted. A user's own server keeps its normal logging.
* ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=90``: the embedded server takes 5-13 s to start
  on two cores, and more under load; Prefect's 20 s default fails spuriously in CI.
* ``PREFECT_LOGGING_EXTRA_LOGGERS``: DSPex's loggers (routing decisions, fallbacks, the LM in use)
  reach the flow run's logs in the UI.
* ``LITELLM_LOCAL_MODEL_COST_MAP=true``: no network fetch of LiteLLM's cost map (no network here).
* Flow-run heartbeats off for the embedded server: a sync flow joins its heartbeat thread at exit,
  which costs ~1 s per flow run (0.27 s without, measured); heartbeats detect crashed runs, and an
  embedded server dies with its process anyway. Against a real server they stay on.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from dspex.private import make_private_dirs, private_home
from dspex.redact import install_log_redaction
from dspex.settings import get_settings

__all__ = ["configure_prefect", "embedded", "original_environment"]

#: The process's environment before DSPex defaulted anything in it (processes it starts on the
#: user's behalf, such as the warm runner, get this one).
_ORIGINAL_ENVIRONMENT = dict(os.environ)


def original_environment() -> dict[str, str]:
    """The environment as it was before this module defaulted Prefect's variables in it."""
    return dict(_ORIGINAL_ENVIRONMENT)


_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    # DSPex's own loggers (routing decisions, fallbacks) go to the flow run's logs in the UI.
    "PREFECT_LOGGING_EXTRA_LOGGERS": "dspex,tasks,flows,registry,deployments",
    # ...and outside a flow run (the CLI, plain function calls) they just log locally.
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
    # LiteLLM (under dspy.LM) otherwise fetches its model cost map over the network at import.
    "LITELLM_LOCAL_MODEL_COST_MAP": "true",
}


def embedded() -> bool:
    """Whether flows run against the embedded server Prefect starts itself (no PREFECT_API_URL)."""
    return not os.environ.get("PREFECT_API_URL")


def configure_prefect() -> None:
    """Default the Prefect environment for DSPex; idempotent, never overrides the user."""
    settings = get_settings()
    if embedded():
        if "PREFECT_HOME" not in os.environ:
            home = settings.resolved_prefect_home
            _private_prefect_home(home)
            os.environ["PREFECT_HOME"] = str(home)
        os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")
    for key, value in _DEFAULTS.items():
        os.environ.setdefault(key, value)
    if "prefect.context" in sys.modules:
        # Prefect was imported before us: rebuild its root settings from the environment.
        import prefect.context

        prefect.context.refresh_global_settings_context()
    if embedded() and "PREFECT_FLOWS_HEARTBEAT_FREQUENCY" not in os.environ:
        _disable_flow_heartbeats()


def _private_prefect_home(home: Path) -> None:
    """Create the project's Prefect home owner-only (0700), with its SQLite database 0600.

    The database holds every run's parameters, states, logs and artifacts; SQLite creates it (and
    its -wal/-shm files, which copy its mode) with the umask's 0644, readable by every local user.
    Creating the empty file first is what SQLite expects of a new database.
    """
    created = not home.exists()
    private_home(get_settings().home)  # the DSPex home above it too: it holds sessions and payloads
    make_private_dirs(home)
    if created or home.stat().st_uid == os.getuid():
        home.chmod(0o700)
    if "PREFECT_API_DATABASE_CONNECTION_URL" in os.environ:
        return  # the user's own database: theirs to protect
    database = home / "prefect.db"
    try:
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        if database.stat().st_mode & 0o077:
            database.chmod(0o600)  # made by an older DSPex, or by Prefect itself before us


def _disable_flow_heartbeats() -> None:
    # Prefect's setting has ge=30 and cannot be None from the environment, so the root settings
    # context is replaced by a copy with heartbeats off (what temporary_settings does, made global).
    import prefect.context
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY

    root = prefect.context.GLOBAL_SETTINGS_CONTEXT
    if root.settings.flows.heartbeat_frequency is None:
        return
    settings = root.settings.copy_with_update(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})
    prefect.context.GLOBAL_SETTINGS_CONTEXT = prefect.context.SettingsContext(
        profile=root.profile, settings=settings
    )


configure_prefect()
install_log_redaction()
