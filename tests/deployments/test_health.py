"""``dspex health`` against the session's Prefect test server, a loopback LM and real payload storage.

The module creates the three pools (``ensure_pools``, as ``dspex pools create`` does), a ``run-step``
deployment per pool, and workers by sending the same heartbeats a worker sends; it deletes them at the
end so later tests (``mode=auto``) see no pools.
"""

import json

import pytest
from prefect.client.orchestration import get_client
from typer.testing import CliRunner

from deployments.cli import app
from tasks.health import POOLS, check_health
from tests.support.openai_server import openai_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lm_server():
    with openai_server() as server:
        yield server


@pytest.fixture(scope="module")
def prefect_objects(prefect_harness):
    """Pools and run-step deployments on the test server, removed afterwards."""
    from deployments.pools import ensure_pools

    with get_client(sync_client=True) as client:
        ensure_pools(worker_type="process", client=client)
        flow_id = client.create_flow_from_name("run-step")
        deployment_ids = [
            client.create_deployment(
                flow_id=flow_id,
                name=f"run-step-{pool}",
                work_pool_name=pool,
                entrypoint="flows/engine/step_runner.py:run_step",
            )
            for pool in POOLS
        ]
        try:
            yield client
        finally:
            for deployment_id in deployment_ids:
                client.delete_deployment(deployment_id)
            for pool in POOLS:
                client.delete_work_pool(pool)


def heartbeat(client, pools):
    for pool in pools:
        client.send_worker_heartbeat(pool, f"{pool}-health-worker", heartbeat_interval_seconds=30)


@pytest.fixture
def env(monkeypatch, tmp_path, lm_server):
    lm_server.outage_status = None
    monkeypatch.setenv("DSPEX_PAYLOAD_URL", str(tmp_path / "payloads"))
    monkeypatch.setenv("DSPEX_LM_MODEL", "openai/test-model")
    monkeypatch.setenv("DSPEX_LM_API_BASE", lm_server.base_url)
    monkeypatch.setenv("DSPEX_LM_API_KEY", "sk-health-secret")
    monkeypatch.setenv("DSPEX_LM_CACHE", "false")
    monkeypatch.setenv("DSPEX_LM_NUM_RETRIES", "0")
    return tmp_path


def statuses(report):
    return {c.name: c.status for c in report.checks}


def test_healthy(env, prefect_objects):
    heartbeat(prefect_objects, POOLS)
    result = CliRunner().invoke(app, ["health", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ok"] is True
    got = {c["name"]: c["status"] for c in report["checks"]}
    assert got == {
        "api": "ok",
        **{f"{kind}:{pool}": "ok" for pool in POOLS for kind in ("pool", "workers", "run-step")},
        "payloads": "ok",
        "registry": "ok",
        "lm": "ok",
    }
    assert "sk-health-secret" not in result.output
    table = CliRunner().invoke(app, ["health", "--no-lm"])
    assert table.exit_code == 0 and "healthy" in table.output and "skipped (--no-lm)" in table.output


def test_no_worker_on_gpu(env, prefect_objects):
    # Only general and optimizer heartbeat; gpu's worker has never registered (a fresh pool).
    prefect_objects.delete_work_pool("gpu")
    from deployments.pools import ensure_pools

    ensure_pools(worker_type="process", pools=("gpu",), client=prefect_objects)
    heartbeat(prefect_objects, ("general", "optimizer"))
    report = check_health(no_lm=True)
    assert not report.ok
    assert [c.name for c in report.failed] == ["workers:gpu"]
    assert "dspex worker --pool gpu" in report.failed[0].detail
    result = CliRunner().invoke(app, ["health", "--no-lm"])
    assert result.exit_code == 1 and "UNHEALTHY" in result.output


def test_unwritable_payload_root(env, monkeypatch, prefect_objects):
    heartbeat(prefect_objects, POOLS)
    blocker = env / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("DSPEX_PAYLOAD_URL", str(blocker / "payloads"))  # a folder under a file
    report = check_health(no_lm=True)
    assert statuses(report)["payloads"] == "fail"
    assert [c.name for c in report.failed] == ["payloads"]
    assert "cannot write to payload storage" in report.failed[0].detail


def test_lm_down(env, lm_server, prefect_objects):
    heartbeat(prefect_objects, POOLS)
    lm_server.outage_status = 503
    try:
        result = CliRunner().invoke(app, ["health", "--json"])
    finally:
        lm_server.outage_status = None
    assert result.exit_code == 1
    report = json.loads(result.output)
    failed = [c for c in report["checks"] if c["status"] == "fail"]
    assert [c["name"] for c in failed] == ["lm"]
    assert "did not answer" in failed[0]["detail"] and "sk-health-secret" not in result.output


def test_unreachable_api_fails_and_skips_the_server_checks(env):
    report = check_health(no_lm=True, api_url="http://127.0.0.1:9/api")
    got = statuses(report)
    assert got["api"] == "fail" and got["workers:gpu"] == "skip" and got["payloads"] == "ok"
    assert not report.ok
