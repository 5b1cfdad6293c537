"""Issue 26.7: `prefect worker start` (the dspex worker type) did not stop within 15 s of SIGTERM:
Prefect's CLI turned it into a SIGINT that was absorbed, and the worker kept polling.

A real SIGTERM to a real worker process that is running a flow run: it takes no new run, waits
``DSPEX_WORKER_STOP_SECONDS`` for its run, marks it Crashed (so its work is redone at once, not
after the dead-worker grace) and exits.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest
from cluster import Cluster, drain_api_workers
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.settings import PREFECT_API_URL, temporary_settings
from support.openai_server import FakeOpenAIServer, openai_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STOP_SECONDS = 3


@pytest.fixture
def provider() -> Iterator[FakeOpenAIServer]:
    with openai_server() as server:
        server.latency_s = 30.0  # every LM call outlasts the stop grace: the run is mid-way
        yield server


def test_sigterm_stops_a_busy_dspex_worker_within_its_grace_and_crashes_its_run(tmp_path, provider):
    env = {
        "DSPEX_LM_MODEL": "openai/test-model",
        "DSPEX_LM_API_BASE": provider.base_url,
        "DSPEX_LM_CACHE": "false",
        "DSPEX_LM_NUM_RETRIES": "0",
        "DSPEX_WORKER_STOP_SECONDS": str(STOP_SECONDS),
        "LITELLM_LOCAL_MODEL_COST_MAP": "true",
    }
    cluster = Cluster(tmp_path, extra_env=env)
    try:
        cluster.start_server()
        cluster.setup(["run-pipeline"])
        worker = cluster.start_prefect_worker("general", "general-1", env={"PREFECT_LOGGING_LEVEL": "INFO"})
        cluster.wait_workers(["general-1"])
        with (
            temporary_settings(updates={PREFECT_API_URL: cluster.api_url}),
            get_client(sync_client=True) as client,
        ):
            deployment = client.read_deployment_by_name("run-pipeline/run-pipeline")
            spec = {"name": "slow", "steps": [{"module": "dspy.Predict", "signature": "question -> answer"}]}
            run = client.create_flow_run_from_deployment(
                deployment.id,
                parameters={"spec": spec, "data": [{"question": "q1"}, {"question": "q2"}], "mode": "local"},
            )
            deadline = time.monotonic() + 180
            while not provider.chat_requests:  # the run reached the LM: it is running on the worker
                assert worker.poll() is None, cluster.log("worker-general-1")
                assert time.monotonic() < deadline, cluster.log("worker-general-1")
                time.sleep(0.2)
            signalled = time.monotonic()
            worker.send_signal(signal.SIGTERM)
            code = worker.wait(timeout=STOP_SECONDS + 20)
            took = time.monotonic() - signalled
            state = client.read_flow_run(run.id).state
            drain_api_workers(cluster.api_url)
    finally:
        cluster.close()
    log = cluster.log("worker-general-1")
    assert took < STOP_SECONDS + 8, f"the worker took {took:.1f} s to stop:\n{log}"
    assert code != 0, log  # it left a run unfinished
    assert state is not None and state.type == StateType.CRASHED, (state, log)
    assert "taking no new runs" in log
