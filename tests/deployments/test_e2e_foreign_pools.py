"""Issue 23: another local account's look-alike pool never receives the owner's batches.

On a Prefect server both accounts can reach (the owner's own, without auth), user ``nobody`` creates
a pool ``general``, a ``run-step/run-step-general`` deployment on it and a worker heartbeat: exactly
what auto mode looks for. Before, the owner's ``dspex run`` (mode auto) dispatched its batches there.
Now auto mode takes only pools and deployments this project recorded (``dspex pools create``,
``dspex deploy``), so the run stays local, says why in one line, and the server never sees a
flow run of that deployment.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.deployments.cluster import BIN, Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# As `nobody` (who cannot run this venv's Python): the standard library against the HTTP API.
_HIJACK = """
import json, sys, urllib.request
api = sys.argv[1]
def post(path, body):
    request = urllib.request.Request(api + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        text = answer.read().decode()
        return json.loads(text) if text else None
pool = post("/work_pools/", {"name": "general", "type": "process"})
flow = post("/flows/", {"name": "run-step"})
deployment = post("/deployments/", {"name": "run-step-general", "flow_id": flow["id"],
                                    "work_pool_name": "general", "entrypoint": "flows/engine/step_runner.py:run_step"})
post("/work_pools/general/workers/heartbeat", {"name": "nobody-worker", "heartbeat_interval_seconds": 600})
print(json.dumps({"pool": pool["id"], "deployment": deployment["id"]}))
"""


def _api(api: str, path: str, body: dict) -> object:
    request = urllib.request.Request(
        api + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 (loopback test server)
        return json.loads(answer.read().decode())


def test_a_pool_another_account_made_never_gets_the_owners_batches(tmp_path: Path) -> None:
    if os.getuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("needs root and runuser to act as another local account")
    cluster = Cluster(tmp_path, extra_env={"DSPEX_DISPATCH_TIMEOUT_SECONDS": "20", "DSPEX_TASK_RETRIES": "0"})
    try:
        cluster.start_server()
        hijack = subprocess.run(
            ["runuser", "-u", "nobody", "--", "/usr/bin/python3", "-c", _HIJACK, cluster.api_url],
            capture_output=True,
            text=True,
            timeout=60,
            cwd="/",
        )
        assert hijack.returncode == 0, hijack.stderr
        planted = json.loads(hijack.stdout)

        (tmp_path / "spec.json").write_text(
            json.dumps(
                {"name": "qa", "steps": [{"module": "dspy.Predict", "signature": "question -> answer"}]}
            )
        )
        (tmp_path / "data.jsonl").write_text(
            "".join(json.dumps({"question": f"What is {i}?"}) + "\n" for i in range(6))
        )
        done = subprocess.run(
            [str(BIN / "dspex"), "run", "--stream", "spec.json", "data.jsonl"],  # mode auto
            cwd=tmp_path,
            env=cluster.env | {"PREFECT_LOGGING_LEVEL": "INFO"},  # the run's log lines on stderr
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        rows = [json.loads(line) for line in done.stdout.splitlines()]
        assert len(rows) == 6 and all(row.get("answer") for row in rows)
        assert done.stderr.count("was not created by this project") == 1  # one line says why
        assert "running every step in this process" in done.stderr
        runs = _api(
            cluster.api_url, "/flow_runs/filter", {"deployments": {"id": {"any_": [planted["deployment"]]}}}
        )
        assert runs == []  # not one batch was handed to the other account's deployment
    finally:
        cluster.close()
