"""The Prefect UI shows a pipeline run and its duration table, checked in headless Chromium.

``prefect server start`` runs on loopback (the e2e cluster helper, its own PREFECT_HOME); a small
pipeline runs against it in local mode (PREFECT_API_URL set, so not the embedded server); then
Debian's ``chromium`` loads the flow run's page (its Artifacts tab), the ``duration-estimates-ui-check`` key's
page (a timeline of that key's artifacts) and the artifact's own page, which renders the table. The UI
is a Vue single-page app that fetches everything after load, so the test drives Chromium over the
DevTools protocol (``--remote-debugging-port``, a small client on ``websockets``): it waits until the
rendered text shows the expected content, then saves a PNG screenshot under the test's temp folder.

A second test is what a person does in the Run form: on the run-pipeline deployment's custom-run
page it fills a two-step pipeline through the form fields (the spec's name, each step's kind select
and its fields, "Add item" for the second step; never the JSON editor), submits, and waits until a
``dspex worker`` has run it to completion. The screenshots of the form and of the finished run are
the ones in docs/img/ (docs/deployment.md, section 9).

Chromium missing: skipped locally with the reason, but failed under ``CI=true`` (``.ci/run``
installs it), so CI never silently drops the UI check.
"""

import base64
import contextlib
import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster import Cluster, Postgres, drain_api_workers
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowFilter,
    FlowFilterName,
)
from prefect.settings import PREFECT_API_URL, temporary_settings
from websockets.sync.client import ClientConnection, connect

from flows import PipelineSpec, run_pipeline
from flows.telemetry.artifacts import duration_key

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
    "--remote-allow-origins=*",
]
PAGE_TIMEOUT_S = 60.0
KEY = duration_key("ui-check")  # one key per pipeline: its timeline is this pipeline's history


def chromium_binary() -> str:
    """The Chromium executable; skip (locally) or fail (CI=true) when it is not installed."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        reason = "chromium is not installed (Debian: apt-get install -y chromium; .ci/run installs it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    return found


class Browser:
    """One headless Chromium page driven over the DevTools protocol."""

    def __init__(self, binary: str, profile: Path, log: Path) -> None:
        self.log = log
        with open(log, "wb") as out:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0"]
                + ["about:blank"],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        port = self._devtools_port(profile)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as answer:  # noqa: S310
            pages = [t for t in json.load(answer) if t["type"] == "page"]
        self.ws: ClientConnection = connect(pages[0]["webSocketDebuggerUrl"], max_size=64 * 2**20)
        self._next_id = 0

    def _devtools_port(self, profile: Path, timeout: float = 30) -> int:
        # Chromium writes the port it picked to DevToolsActivePort in the profile folder.
        marker = profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"chromium exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}"
                )
            if marker.exists() and (lines := marker.read_text().split()):
                return int(lines[0])
            time.sleep(0.1)
        raise TimeoutError(f"chromium opened no DevTools port in {timeout} s: {self.log.read_text()[-2000:]}")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one DevTools command and return its result (events in between are skipped)."""
        self._next_id += 1
        self.ws.send(json.dumps({"id": self._next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=PAGE_TIMEOUT_S))
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method} failed: {message['error']}")
                return dict(message.get("result", {}))

    def text(self) -> str:
        result = self.call("Runtime.evaluate", expression="document.body ? document.body.innerText : ''")
        return str(result["result"].get("value", ""))

    def open_and_wait(self, url: str, expected: list[str], tab: str | None = None) -> str:
        """Load ``url`` (then click its ``tab``) and wait until every ``expected`` string is shown."""
        self.call("Page.navigate", url=url)
        if tab is not None:
            self.click_tab(tab)
        deadline = time.monotonic() + PAGE_TIMEOUT_S
        text = ""
        while time.monotonic() < deadline:
            text = self.text()
            if all(s in text for s in expected):
                time.sleep(0.5)  # let the last layout pass settle before the screenshot
                return self.text()
            time.sleep(0.25)
        missing = [s for s in expected if s not in text]
        raise AssertionError(f"{url} never showed {missing} in {PAGE_TIMEOUT_S} s; page text:\n{text[:3000]}")

    def click_tab(self, label: str) -> None:
        """Click the page's tab called ``label`` once the app has rendered it."""
        script = (
            "(() => { const tab = [...document.querySelectorAll('[role=tab], .p-tab, button, a')]"
            f".find(e => e.innerText && e.innerText.trim() === {json.dumps(label)});"
            " if (!tab) return false; tab.click(); return true; })()"
        )
        deadline = time.monotonic() + PAGE_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.call("Runtime.evaluate", expression=script)["result"].get("value"):
                return
            time.sleep(0.25)
        raise AssertionError(
            f"no tab {label!r} appeared in {PAGE_TIMEOUT_S} s; page text:\n{self.text()[:3000]}"
        )

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        with contextlib.suppress(Exception):  # the socket may already be gone with the process
            self.ws.close()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, 9)
                self.proc.wait(timeout=10)


@pytest.fixture
def browser(tmp_path) -> Iterator[Browser]:
    binary = chromium_binary()
    b = Browser(binary, tmp_path / "chromium-profile", tmp_path / "chromium.log")
    try:
        yield b
    finally:
        b.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Cluster]:
    """One server for the module: the pools, the run-pipeline deployment and a general worker."""
    chromium_binary()  # skip before paying for a server when there is no browser
    database = Postgres()  # distributed mode's documented database (SQLite logs "database is locked")
    c = Cluster(
        tmp_path_factory.mktemp("ui-cluster"),
        extra_env={"PREFECT_LOGGING_LEVEL": "INFO"},  # flow-run logs reach the UI
        database_url=database.url,
    )
    try:
        c.start_server()
        c.setup(["run-pipeline"])
        c.start_worker("general", "ui-general")
        c.wait_workers(["ui-general"])
        yield c
        drain_api_workers(c.api_url)
    finally:
        c.close()
        database.close()


def test_flow_run_page_and_artifact_page_show_the_duration_table(server, browser, tmp_path):
    spec = PipelineSpec.model_validate(
        {
            "name": "ui-check",
            "steps": [{"name": "answer", "module": "dspy.Predict", "signature": "question -> answer"}],
        }
    )
    with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
        result = run_pipeline(spec, data=[{"question": "What is DSPy?"}, {"question": "Who wrote Hamlet?"}])
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["run-pipeline"])))
    assert result.summary.rows_out == 2
    assert len(runs) == 1 and runs[0].state_type is not None and runs[0].state_type.value == "COMPLETED"
    run = runs[0]

    # The flow run's page, on its Artifacts tab: the run, and a TABLE card for duration-estimates.
    text = browser.open_and_wait(f"{server.ui_url}/runs/flow-run/{run.id}", [run.name, KEY], tab="Artifacts")
    assert "Completed" in text and re.search(rf"TABLE\s+{KEY}", text), text[:3000]
    assert browser.screenshot(tmp_path / "flow-run.png").stat().st_size > 10_000

    # The key's page: the timeline of this pipeline's duration tables, whose entry is this run's artifact.
    with (
        temporary_settings(updates={PREFECT_API_URL: server.api_url}),
        get_client(sync_client=True) as client,
    ):
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[KEY]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]),
            )
        )
    assert len(artifacts) == 1
    artifact = artifacts[0]
    browser.open_and_wait(
        f"{server.ui_url}/artifacts/key/{KEY}",
        ["pipeline 'ui-check'", str(artifact.id)[:8], run.name],
    )
    assert browser.screenshot(tmp_path / "duration-key.png").stat().st_size > 10_000

    # The artifact's page renders the table: the columns a user reads first, and the step's row
    # (module, batches, tokens: the details table, so the first one fits the screen; issue 26.6).
    text = browser.open_and_wait(
        # the cells render after the headers (a loaded machine showed the numbers before the strings)
        f"{server.ui_url}/artifacts/artifact/{artifact.id}",
        ["estimated ms", "actual ms", "error %", "answer", "general"],
    )
    assert re.search(r"answer\s+general\s+\d+", text), text[:3000]
    assert browser.screenshot(tmp_path / "duration-estimates.png").stat().st_size > 10_000


# Form helpers run in the page: a field is found by its label inside a scope (the page, or one step).
FORM_JS = """
window.F = {
  field(scope, label) {
    return [...scope.querySelectorAll('.schema-form-property')].find(e => {
      const l = e.querySelector('.schema-form-property__label');
      return l && l.innerText.trim() === label;
    });
  },
  need(scope, label) {
    const f = F.field(scope, label);
    if (!f) throw new Error('no form field ' + label);
    return f;
  },
  setText(scope, label, value) {
    const t = F.need(scope, label).querySelector('textarea, input');
    t.focus(); t.value = value;
    t.dispatchEvent(new Event('input', {bubbles: true}));
    t.dispatchEvent(new Event('change', {bubbles: true}));
    t.blur();
  },
  choose(scope, label, value) {
    const s = F.need(scope, label).querySelector('select');
    s.value = value;
    s.dispatchEvent(new Event('change', {bubbles: true}));
  },
  steps() { return F.need(document, 'Steps'); },
  items() {
    const steps = F.steps();
    return [...steps.querySelectorAll('.schema-form-property-array-item')]
      .filter(i => !steps.contains(i.parentElement.closest('.schema-form-property-array-item')));
  },
  addStep() {
    const buttons = [...F.steps().querySelectorAll('button')].filter(b => b.innerText.trim() === 'Add item');
    buttons[buttons.length - 1].click();
  },
  click(label) {
    const b = [...document.querySelectorAll('button')].find(b => b.innerText.trim() === label);
    if (!b) throw new Error('no button ' + label);
    b.click();
  },
};
true
"""

FILL_JS = """
(async () => {
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  F.setText(document, 'Name', 'form-qa');
  F.addStep();  // first: adding an item rebuilds the list from its last emitted value
  await sleep(1000);
  const items = F.items();
  const [first, second] = [items[0], items[items.length - 1]];
  F.choose(first, 'Kind (Optional)', 'module');
  await sleep(300);  // a choice re-renders the step: type into it afterwards
  F.setText(first, 'Module (Optional)', 'dspy.Predict');
  F.setText(first, 'Signature (Optional)', 'question -> answer');
  F.choose(second, 'Kind (Optional)', 'native');
  await sleep(300);
  F.choose(second, 'Native (Optional)', 'template');
  await sleep(300);
  F.setText(second, 'Template (Optional)', 'Q: {{ question }} / A: {{ answer }}');
  F.setText(second, 'Output (Optional)', 'card');
  await sleep(500);
  return items.length;
})()
"""


def evaluate(browser: Browser, expression: str) -> Any:
    result = browser.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
    if "exceptionDetails" in result:
        raise AssertionError(f"page script failed: {result['exceptionDetails']}")
    return result["result"].get("value")


def test_a_two_step_pipeline_filled_in_the_run_form_runs_to_completion(server, browser, tmp_path):
    with (
        temporary_settings(updates={PREFECT_API_URL: server.api_url}),
        get_client(sync_client=True) as client,
    ):
        deployment = client.read_deployment_by_name("run-pipeline/run-pipeline")
        before = {r.id for r in client.read_flow_runs()}

    # The custom-run page renders the spec as fields: a Steps list whose item has a Kind select.
    browser.open_and_wait(
        f"{server.ui_url}/deployments/deployment/{deployment.id}/run", ["Steps", "Kind (Optional)", "Submit"]
    )
    evaluate(browser, FORM_JS)
    assert evaluate(browser, FILL_JS) == 2
    form = browser.screenshot(tmp_path / "run-form.png")
    evaluate(browser, "F.steps().scrollIntoView(); true")
    steps_shot = browser.screenshot(tmp_path / "run-form-steps.png")
    assert form.stat().st_size > 10_000 and steps_shot.stat().st_size > 10_000
    evaluate(browser, "F.click('Submit'); true")

    # The run the form created carries exactly what was filled in, and a worker completes it.
    deadline = time.monotonic() + 240
    run = None
    with (
        temporary_settings(updates={PREFECT_API_URL: server.api_url}),
        get_client(sync_client=True) as client,
    ):
        while time.monotonic() < deadline:
            new = [
                r for r in client.read_flow_runs() if r.id not in before and r.deployment_id == deployment.id
            ]
            run = new[0] if new else None
            if (
                run is not None
                and run.state_type is not None
                and run.state_type.value in ("COMPLETED", "FAILED", "CRASHED")
            ):
                break
            time.sleep(1)
        assert run is not None, f"the form created no run; page:\n{browser.text()[:2000]}"
        assert run.state_name == "Completed", (run.state_name, server.log("worker-ui-general"))
        spec = PipelineSpec.model_validate(run.parameters["spec"])
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[duration_key("form-qa")]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]),
            )
        )
    assert spec.name == "form-qa" and [s.kind for s in spec.steps] == ["module", "native"]
    assert spec.steps[0].module == "dspy.Predict" and spec.steps[1].output == "card"
    assert len(artifacts) == 1 and "card" not in str(artifacts[0].data)  # the table lists steps, not rows
    # Its page: completed, and its log opens with the mode decision (no run-step deployment here: local).
    browser.open_and_wait(f"{server.ui_url}/runs/flow-run/{run.id}", [run.name, "Completed", "mode auto"])
    assert browser.screenshot(tmp_path / "run-completed.png").stat().st_size > 10_000
