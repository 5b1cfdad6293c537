"""Batch mode's tests: fast polling, no retry delay, the fixture programs trusted, pools shut after."""

import pytest

from flows.engine.pools import shutdown_local_pools


@pytest.fixture(autouse=True)
def _fast(monkeypatch):
    monkeypatch.setenv("DSPEX_LM_BATCH_POLL_SECONDS", "0.05")
    monkeypatch.setenv("DSPEX_LM_BATCH_POLL_MAX_SECONDS", "0.2")
    monkeypatch.setenv("DSPEX_TASK_RETRY_DELAY_SECONDS", "0")
    monkeypatch.setenv("DSPEX_TRUSTED_IMPORT_ROOTS", '["fixtures_pkg"]')
    yield
    shutdown_local_pools()
