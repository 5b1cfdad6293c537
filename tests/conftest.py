"""Shared fixtures: isolation of DSPEX_* settings and DSPy globals, and one Prefect test server.

The environment is set before anything imports Prefect, so the suite never touches the project's
own ``.dspex`` folder or ``~/.prefect``.
"""

from __future__ import annotations

import atexit
import copy
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="dspex-tests-"))
atexit.register(shutil.rmtree, _SESSION_HOME, ignore_errors=True)
for _key in [k for k in os.environ if k.startswith("DSPEX_")]:
    del os.environ[_key]
os.environ.pop("PREFECT_API_URL", None)
os.environ["DSPEX_HOME"] = str(_SESSION_HOME)
os.environ["PREFECT_HOME"] = str(_SESSION_HOME / "prefect")
os.environ["DSPY_CACHEDIR"] = str(_SESSION_HOME / "dspy-cache")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402

import dspex.bootstrap  # noqa: E402,F401  (must precede the first Prefect import)


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One temporary Prefect server (SQLite) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(autouse=True)
def _harness_for_integration(request: pytest.FixtureRequest) -> None:
    # Integration tests run real flows; they share the session's server.
    if request.node.get_closest_marker("integration") or request.node.get_closest_marker("e2e"):
        request.getfixturevalue("prefect_harness")


@pytest.fixture(autouse=True)
def _isolate_dspex_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Each test gets its own DSPEX_HOME and none of the caller's DSPEX_* variables."""
    for key in [k for k in os.environ if k.startswith("DSPEX_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("DSPEX_HOME", str(tmp_path / "dspex-home"))
    # Tests read datasets and payloads from their temporary folders and fsspec's memory store; the
    # read fence (tasks.payloads.confine) is tested in tests/security with its real defaults.
    roots = [os.getcwd(), str(tmp_path_factory.getbasetemp()), str(_SESSION_HOME), "memory://"]
    monkeypatch.setenv("DSPEX_DATA_ROOTS", json.dumps(roots))


@pytest.fixture(autouse=True)
def _isolate_dspy_settings() -> Iterator[None]:
    """Restore DSPy's global configuration after each test."""
    import sys

    import dspy  # noqa: F401

    dspy_settings = sys.modules["dspy.dsp.utils.settings"]
    saved = copy.copy(dict(dspy_settings.main_thread_config))
    yield
    dspy_settings.main_thread_config.clear()
    dspy_settings.main_thread_config.update(saved)


@pytest.fixture(autouse=True)
def _fresh_default_registry() -> Iterator[None]:
    """Learned estimates of one test never leak into another (the default registry is lazy)."""
    yield
    import sys

    if "registry" in sys.modules:
        sys.modules["registry"].reset_default_registry()
