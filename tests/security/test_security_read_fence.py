"""Issue 20 (the read fence refused the local user's own files) and issue 25 items 1-2 (fsspec chains
and percent-encoded http paths escaped it).

The fence guards values that arrive through the Prefect API; a local caller reads what its user can
read. Original failures, on the main before this change:

- ``dspex run spec.yaml /tmp/x/d.jsonl`` and ``run_pipeline(spec, data="/tmp/x/d.jsonl")`` failed with
  ``PayloadAccessError``; ``read_payload(write_payload(rows, base_url=tmpdir))`` did too.
- ``simplecache::/outside/secret.jsonl``, ``file:/outside/...`` and ``local:///outside/...`` passed the
  fence (read as files of those names in the project folder) and fsspec then read the outside file;
  with ``DSPEX_DATA_ROOTS=["http://127.0.0.1:PORT/data/"]``, ``.../data/%2e%2e/admin.jsonl`` fetched
  ``/admin.jsonl``.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from dspy.utils.dummies import DummyLM

from dspex.exceptions import PayloadAccessError
from tasks.payloads import Dataset, read_payload, read_rows, write_payload
from tasks.payloads.confine import fenced

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
SECRET = "the-outside-secret-row"
SPEC = {"name": "fence", "steps": [{"module": "dspy.Predict", "signature": "question -> answer"}]}


@pytest.fixture
def project(tmp_path, monkeypatch):
    """The current directory is a project folder with DSPex's default roots; a dataset lies outside."""
    root = tmp_path / "project"
    root.mkdir()
    monkeypatch.chdir(root)
    monkeypatch.delenv("DSPEX_DATA_ROOTS", raising=False)
    monkeypatch.setenv("DSPEX_HOME", str(root / ".dspex"))
    outside = tmp_path / "x"
    outside.mkdir()
    data = outside / "d.jsonl"
    data.write_text(json.dumps({"question": SECRET}) + "\n", encoding="utf-8")
    (root / "inside.jsonl").write_text(json.dumps({"question": "inside?"}) + "\n", encoding="utf-8")
    return root, data


@pytest.fixture
def http_files():
    """A loopback file server: ``/data/*.jsonl`` and ``/admin.jsonl``; it records every path asked."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self, with_body: bool) -> None:
            hits.append(self.path)
            body = json.dumps({"question": "admin" if "admin" in self.path else "from http"}).encode() + b"\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        def do_GET(self):  # noqa: N802 - the stdlib's name
            self._answer(True)

        def do_HEAD(self):  # noqa: N802
            self._answer(False)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hits
    finally:
        server.shutdown()
        server.server_close()


def _cli(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DSPEX_", "PREFECT_"))}
    base.update(DSPEX_HOME=str(cwd / ".dspex"), DSPEX_SHARED_SERVER="false", COLUMNS="200", **env)
    return subprocess.run(  # noqa: S603 - our own venv's dspex
        [str(BIN / "dspex"), *args], cwd=cwd, env=base, capture_output=True, text=True, timeout=300
    )


# --- local callers read their own files --------------------------------------------------------
@pytest.mark.integration
def test_dspex_run_reads_a_dataset_outside_the_project_folder(project):
    root, data = project
    (root / "spec.json").write_text(json.dumps(SPEC), encoding="utf-8")
    done = _cli(root, "run", "spec.json", str(data))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "PayloadAccessError" not in done.stdout + done.stderr
    assert "1 rows in, 1 completed" in done.stdout + done.stderr


@pytest.mark.integration
def test_run_pipeline_from_python_reads_a_path_outside_the_project_folder(project):
    from flows import PipelineSpec, run_pipeline

    _root, data = project
    lm = DummyLM([{"answer": "ok"}])
    result = run_pipeline(PipelineSpec.model_validate(SPEC), data=str(data), lm=lm, mode="local")
    assert [r["question"] for r in result.rows()] == [SECRET]


def test_a_ref_the_api_returned_reads_back_even_inside_a_fence(project, tmp_path):
    rows = [{"q": "x" * 100}] * 300  # stored, not inline
    elsewhere = tmp_path / "elsewhere-payloads"
    assert read_payload(write_payload(rows, base_url=str(elsewhere))) == rows
    with fenced():
        assert read_payload(write_payload(rows, base_url=str(elsewhere))) == rows
        assert read_rows(write_payload(rows, base_url=str(elsewhere), name="named")) == rows


def test_dspex_show_prints_a_local_users_file_and_refuses_it_under_read_fence_all(project):
    root, data = project
    shown = _cli(root, "show", str(data), "--jsonl")
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert SECRET in shown.stdout
    for form in (str(data), f"simplecache::{data}", f"filecache::{data}", f"file:{data}", f"local://{data}"):
        refused = _cli(root, "show", form, "--jsonl", DSPEX_READ_FENCE="all")
        assert refused.returncode == 2, (form, refused.stdout, refused.stderr)
        assert "PayloadAccessError" in refused.stdout + refused.stderr, form
        assert SECRET not in refused.stdout + refused.stderr, form
    inside = _cli(root, "show", "inside.jsonl", "--jsonl", DSPEX_READ_FENCE="all")
    assert inside.returncode == 0 and "inside?" in inside.stdout, inside.stderr[-3000:]


# --- a fence: chains, fsspec's spellings of local files, percent-encoded URLs ----------------
@pytest.mark.parametrize(
    "form",
    [
        "{path}",
        "simplecache::{path}",
        "filecache::{path}",
        "blockcache::file://{path}",
        "simplecache::file://{path}",
        "file:{path}",
        "local://{path}",
        "local:{path}",
    ],
)
def test_a_fenced_read_refuses_every_spelling_of_an_outside_file(project, form):
    _root, data = project
    location = form.format(path=data)
    with fenced(), pytest.raises(PayloadAccessError) as refused:
        Dataset.from_path(location)
    assert SECRET not in str(refused.value)


def test_a_fenced_read_refuses_a_chain_even_to_an_inside_file(project):
    root, _data = project
    with fenced():
        assert len(Dataset.from_path(str(root / "inside.jsonl"))) == 1
        with pytest.raises(PayloadAccessError, match="chained"):
            Dataset.from_path(f"simplecache::{root / 'inside.jsonl'}")


@pytest.mark.parametrize(
    "tail",
    [
        "%2e%2e/admin.jsonl",
        "%2E%2E/admin.jsonl",
        ".%2e/admin.jsonl",
        "%252e%252e/admin.jsonl",
        "..%2fadmin.jsonl",
        "..%5cadmin.jsonl",
        "..%5Cadmin.jsonl",
        "%2e%2e%2fadmin.jsonl",
        "..;/admin.jsonl",
        "sub/%2e%2e/%2e%2e/admin.jsonl",
    ],
)
def test_an_allowed_http_prefix_does_not_escape_with_encoded_dot_segments(
    project, http_files, monkeypatch, tail
):
    base, hits = http_files
    monkeypatch.setenv("DSPEX_DATA_ROOTS", json.dumps([f"{base}/data/"]))
    with fenced(), pytest.raises(PayloadAccessError):
        Dataset.from_path(f"{base}/data/{tail}")
    assert hits == []  # nothing was asked of the server


def test_an_allowed_http_prefix_still_reads_under_it(project, http_files, monkeypatch):
    base, hits = http_files
    monkeypatch.setenv("DSPEX_DATA_ROOTS", json.dumps([f"{base}/data/"]))
    with fenced():
        assert Dataset.from_path(f"{base}/data/rows.jsonl").to_rows() == [{"question": "from http"}]
        assert len(Dataset.from_path(f"{base}/data/my%20rows.jsonl")) == 1
        with pytest.raises(PayloadAccessError):
            Dataset.from_path(f"{base}/database.jsonl")  # a prefix is a folder, not a string prefix
    assert hits and all(h.startswith("/data/") for h in hits)


# --- deployment runs: the Prefect API's way in --------------------------------------------------
def _deployment_run(flow, name: str, parameters: dict):
    """Create a run of ``flow``'s deployment through the API and execute it as a worker does."""
    from prefect.deployments import run_deployment
    from prefect.flow_engine import run_flow

    flow.to_deployment(name=name).apply()
    flow_run = run_deployment(f"{flow.name}/{name}", parameters=parameters, timeout=0)
    assert flow_run.deployment_id is not None
    return run_flow(flow, flow_run=flow_run, return_type="state")


def _access_error(state) -> BaseException | None:
    error = state.result(raise_on_failure=False)
    while error is not None and not isinstance(error, PayloadAccessError):
        error = error.__cause__ or error.__context__
    return error


@pytest.mark.integration
@pytest.mark.parametrize(
    "form",
    ["{path}", "file:{path}", "local://{path}", "simplecache::{path}", "{http}/data/%2e%2e/admin.jsonl"],
)
def test_a_deployment_run_cannot_read_outside_the_data_roots(project, http_files, monkeypatch, form):
    from flows.pipeline import run_pipeline

    root, data = project
    base, hits = http_files
    monkeypatch.setenv("DSPEX_DATA_ROOTS", json.dumps([str(root), f"{base}/data/"]))
    location = form.format(path=data, http=base)
    state = _deployment_run(run_pipeline, "fence", {"spec": SPEC, "data": location, "mode": "local"})
    assert state.is_failed()
    assert _access_error(state) is not None, state.message
    assert SECRET not in str(state.message)
    assert not any("admin" in h for h in hits)


@pytest.mark.integration
def test_a_deployment_run_reads_inside_the_data_roots(project):
    from flows.pipeline import run_pipeline

    state = _deployment_run(
        run_pipeline, "fence-inside", {"spec": SPEC, "data": "inside.jsonl", "mode": "local"}
    )
    assert state.is_completed(), state.message


@pytest.mark.integration
def test_a_flow_nested_in_a_deployment_run_is_fenced_too(project):
    from flows.rag import rag_qa

    _root, data = project
    corpus = data.with_name("corpus.jsonl")
    corpus.write_text(json.dumps({"text": SECRET}) + "\n", encoding="utf-8")
    questions = [{"question": "q?", "answer": "a"}]
    state = _deployment_run(  # its run_pipeline subflow reads the corpus, in its retrieve step
        rag_qa, "fence-nested", {"questions": questions, "corpus": str(corpus), "mode": "local"}
    )
    assert state.is_failed() and _access_error(state) is not None, state.message
    assert SECRET not in str(state.message)


@pytest.mark.integration
def test_a_session_turn_deployment_run_cannot_read_a_program_state_outside(project):
    from flows.sessions.turns import session_turn

    _root, data = project
    state_file = data.with_name("state.json")
    state_file.write_text(json.dumps({"demos": [{"question": SECRET}]}), encoding="utf-8")
    program = {"module": "dspy.Predict", "signature": "question -> answer", "state": str(state_file)}
    state = _deployment_run(session_turn, "fence-session", {"inputs": {"question": "q?"}, "program": program})
    assert state.is_failed() and _access_error(state) is not None, state.message


@pytest.mark.integration
def test_run_step_fences_its_batch_however_it_is_started(project):
    from flows.engine.step_runner import run_step
    from tasks.payloads import PayloadRef

    _root, data = project
    forged = PayloadRef(
        uri=f"simplecache::{data}",
        format="msgpack",
        kind="rows",
        rows=1,
        nbytes=1,
        checksum="xxh3_128:" + "0" * 32,
    )
    step = {"kind": "module", "module": "dspy.Predict", "signature": "question -> answer"}
    with pytest.raises(PayloadAccessError):
        run_step(step=step, batch=forged, batch_key="fence-batch")


@pytest.mark.slow
@pytest.mark.integration
def test_a_corpus_a_local_caller_loaded_is_not_served_to_a_deployment_run_from_the_cache(project):
    from flows.rag import rag_qa

    _root, data = project
    corpus = data.with_name("cached-corpus.jsonl")
    corpus.write_text(json.dumps({"text": SECRET}) + "\n", encoding="utf-8")
    questions = [{"question": "q?", "answer": "a"}]
    local = rag_qa(questions=questions, corpus=str(corpus), mode="local", module="dspy.Predict")
    assert not [r for r in local.pipeline.rows() if r.get("_error", {}).get("type") == "PayloadAccessError"]
    state = _deployment_run(
        rag_qa,
        "fence-cached",
        {"questions": questions, "corpus": str(corpus), "mode": "local", "module": "dspy.Predict"},
    )
    assert state.is_failed() and _access_error(state) is not None, state.message
