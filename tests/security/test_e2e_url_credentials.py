"""Issue 20: a password inside ``DSPEX_LM_API_BASE`` never leaves the process unmasked.

The original failure: with ``DSPEX_LM_API_BASE=http://alice:PASSWORD@127.0.0.1:PORT/v1`` and the
endpoint down, DSPy's transport said ``failed to connect to alice:PASSWORD@127.0.0.1:PORT`` (the
authority without its scheme, which the URL pattern did not see), and that text reached the rows'
``_error``, the output file, the console, Prefect's logs, the flow run's state message, the summary
artifact and the server's events. An LM config passed from Python also stored its ``api_base`` with
the password among the flow run's parameters.

Each test runs against a live Prefect server and a loopback port with nothing listening, then reads
back every byte the run produced: the files under ``DSPEX_HOME`` and the output file, the CLI's
stdout and stderr, and through the server's API the flow runs (parameters, states and their
messages), task runs, logs, artifacts and events.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.deployments.cluster import Cluster, drain_api_workers
from tests.support.ports import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]

PASSWORD = "hunter2-Xq9-leak"
SPEC = {"name": "leak-check", "steps": [{"module": "dspy.Predict", "signature": "question -> answer"}]}


def lm_url(port: int) -> str:
    return f"http://alice:{PASSWORD}@127.0.0.1:{port}/v1"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("leak"))
    try:
        cluster.start_server()
        yield cluster
        drain_api_workers(cluster.api_url)
    finally:
        cluster.close()


def _post(api: str, path: str, body: dict) -> dict | list:
    request = urllib.request.Request(
        api + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 (loopback)
        return json.loads(answer.read())


def _get(api: str, path: str) -> dict | list:
    with urllib.request.urlopen(api + path, timeout=30) as answer:  # noqa: S310 (loopback)
        return json.loads(answer.read())


def _events(api: str) -> list[dict]:
    page = _post(
        api, "/events/filter", {"limit": 50, "filter": {"occurred": {"since": "2000-01-01T00:00:00Z"}}}
    )
    events = list(page["events"])
    while page.get("next_page"):
        with urllib.request.urlopen(page["next_page"], timeout=30) as answer:  # noqa: S310
            page = json.loads(answer.read())
        events += page["events"]
    return events


def server_texts(api: str, flow_run_id: str, wait_for_event: str = "dspex.run.summary") -> dict[str, str]:
    """Everything the server holds about one flow run (and its task runs), as JSON text per kind."""
    run_filter = {"flow_runs": {"id": {"any_": [flow_run_id]}}}
    texts: dict[str, str] = {}
    texts["flow run"] = json.dumps(_get(api, f"/flow_runs/{flow_run_id}"))
    texts["flow run states"] = json.dumps(_get(api, f"/flow_run_states/?flow_run_id={flow_run_id}"))
    task_runs = _post(api, "/task_runs/filter", {**run_filter, "limit": 200})
    texts["task runs"] = json.dumps(task_runs)
    texts["task run states"] = json.dumps(
        [_get(api, f"/task_run_states/?task_run_id={t['id']}") for t in task_runs]
    )
    texts["logs"] = json.dumps(_post(api, "/logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run_id]}}}))
    texts["artifacts"] = json.dumps(_post(api, "/artifacts/filter", {**run_filter, "limit": 200}))
    # The server persists events in the background: wait until the run's last one is stored.
    deadline = time.monotonic() + 60
    while True:
        events = [e for e in _events(api) if flow_run_id in json.dumps(e)]
        if any(e["event"] == wait_for_event for e in events) or time.monotonic() > deadline:
            break
        time.sleep(1)
    texts["events"] = json.dumps(events)
    return texts


def leaks(texts: dict[str, str]) -> dict[str, str]:
    """Each text that holds the password, with the password's surroundings."""
    found = {}
    for where, text in texts.items():
        at = text.find(PASSWORD)
        if at >= 0:
            found[where] = text[max(at - 150, 0) : at + 40]
    return found


def files_under(*roots: Path) -> dict[str, str]:
    texts = {}
    for root in roots:
        paths = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for path in paths:
            texts[str(path)] = path.read_bytes().decode("utf-8", errors="replace")
    return texts


@pytest.mark.parametrize("flag", ["--fail-fast", "--continue-on-error"])
def test_cli_run_against_a_dead_endpoint_never_shows_the_password(server, tmp_path, flag):
    dead = free_port()
    (tmp_path / "spec.json").write_text(json.dumps(SPEC))
    (tmp_path / "data.jsonl").write_text('{"question": "q1"}\n{"question": "q2"}\n')
    home, out = tmp_path / "home", tmp_path / "out.jsonl"
    env = server.env | {
        "DSPEX_HOME": str(home),
        "DSPEX_DATA_ROOTS": json.dumps([str(tmp_path)]),
        "DSPEX_PAYLOAD_URL": str(home / "payloads"),
        "DSPEX_LM_MODEL": "openai/test-model",
        "DSPEX_LM_API_BASE": lm_url(dead),
        "OPENAI_API_KEY": "sk-test-0123456789",
        "DSPEX_LM_CACHE": "false",
        "DSPEX_TASK_RETRY_DELAY_SECONDS": "0.05",
        "PREFECT_LOGGING_LEVEL": "INFO",
    }
    started = datetime.now(UTC)
    done = subprocess.run(
        [str(Path(sys.executable).parent / "dspex"), "run", "spec.json", "data.jsonl", "-o", str(out), flag],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        timeout=300,
        check=False,
    )
    console = {"stdout": done.stdout.decode(errors="replace"), "stderr": done.stderr.decode(errors="replace")}
    assert done.returncode == (2 if flag == "--fail-fast" else 0), console
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["_error"]["type"] for r in rows] == ["LMTransportError", "LMTransportError"], rows
    # The errors still say where the run tried to connect, with the credentials masked.
    assert f"***@127.0.0.1:{dead}" in rows[0]["_error"]["message"], rows[0]
    assert f"127.0.0.1:{dead}" in console["stdout"] + console["stderr"]

    texts = console | files_under(home, out)
    run_ids = {
        r["id"]
        for r in _post(server.api_url, "/flow_runs/filter", {"limit": 200})
        if datetime.fromisoformat(r["created"]) >= started
    }
    assert len(run_ids) == 1, run_ids
    for run_id in run_ids:
        for kind, text in server_texts(server.api_url, run_id).items():
            texts[f"{kind} of {run_id}"] = text
    assert f"127.0.0.1:{dead}" in "".join(v for k, v in texts.items() if k.startswith("logs"))
    assert leaks(texts) == {}


def test_run_pipeline_with_a_password_in_its_lm_config_stores_none(server, tmp_path, monkeypatch, capfd):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows import PipelineSpec, run_pipeline
    from flows.engine.params import LMConfig
    from flows.engine.pools import shutdown_local_pools
    from flows.guards import circuit

    dead = free_port()
    home = tmp_path / "home"
    monkeypatch.setenv("DSPEX_HOME", str(home))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789")
    monkeypatch.setenv("DSPEX_LM_CACHE", "false")
    monkeypatch.setenv("DSPEX_TASK_RETRY_DELAY_SECONDS", "0.05")
    circuit.reset_breakers()
    lm = LMConfig(model="openai/test-model", api_base=lm_url(dead))
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            state = run_pipeline(
                PipelineSpec.model_validate(SPEC),
                data=[{"question": "q1"}, {"question": "q2"}],
                lm=lm,
                continue_on_error=True,
                return_state=True,
            )
            result = state.result()
            drain_api_workers(server.api_url)  # this process's logs and events reach the server now
    finally:
        circuit.reset_breakers()
        shutdown_local_pools()
    rows = result.rows()
    assert all(r["_error"]["type"] == "LMTransportError" for r in rows), rows
    assert f"***@127.0.0.1:{dead}" in rows[0]["_error"]["message"]
    captured = capfd.readouterr()
    texts = {"stdout": captured.out, "stderr": captured.err, "rows": json.dumps(rows)}
    texts |= {"result": result.model_dump_json()} | files_under(home)
    texts |= server_texts(server.api_url, str(state.state_details.flow_run_id))
    assert "127.0.0.1" in texts["flow run"]  # the LM config is stored, without its password
    assert leaks(texts) == {}
