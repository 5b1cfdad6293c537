"""Issue 25 item 5: rows missing an input, or null where null is not accepted, are refused per row.

The original failure: rows ``{"question": "a"}``, ``{"query": "b"}`` and ``{"question": null}``
through ``question -> answer`` all "completed", and the LM received the text ``None`` twice (paid
for). The JSONL reader also took its columns from the first row, so ``{"query": "b"}`` lost its
field. Now each such row fails with an ``InputValidationError`` naming its row number and the
field, before any LM call, and the other rows run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import dspy
import pytest

from flows import PipelineSpec, run_pipeline
from flows.engine.pools import shutdown_local_pools
from tests.support.openai_server import openai_server

ANSWER = "[[ ## answer ## ]]\nforty-two\n\n[[ ## completed ## ]]"
ROWS = [{"question": "a"}, {"query": "b"}, {"question": None}]


def qa(signature: str = "question -> answer") -> PipelineSpec:
    return PipelineSpec.model_validate(
        {"name": "inputs-check", "steps": [{"module": "dspy.Predict", "signature": signature}]}
    )


@pytest.fixture
def provider():
    with openai_server(responder=lambda messages: ANSWER) as server:
        yield server


def live_lm(server) -> dspy.LM:
    return dspy.LM("openai/test-model", api_base=server.base_url, api_key="sk-test", cache=False)


def sent_texts(server) -> list[str]:
    return [text for request in server.chat_requests for _, text in request.messages]


@pytest.mark.integration
def test_rows_missing_or_null_inputs_are_refused_per_row_and_never_sent(provider):
    try:
        result = run_pipeline(
            qa(), data=[dict(r) for r in ROWS], lm=live_lm(provider), continue_on_error=True
        )
    finally:
        shutdown_local_pools()
    rows = result.rows()
    assert rows[0]["answer"] == "forty-two" and "_error" not in rows[0]
    for number, how in ((1, "missing"), (2, "null")):
        error = rows[number]["_error"]
        assert error["type"] == "InputValidationError", error
        assert error["message"].startswith(f"row {number}: field 'question' is {how}"), error
        assert error["retryable"] is False
    assert rows[1]["query"] == "b"  # the row's own fields are kept
    assert len(provider.chat_requests) == 1  # only row 0 was paid for
    assert not [text for text in sent_texts(provider) if "None" in text]
    assert [(f.row, f.type) for f in result.summary.failures] == [
        (1, "InputValidationError"),
        (2, "InputValidationError"),
    ]


@pytest.mark.integration
def test_an_optional_input_accepts_null(provider):
    try:
        result = run_pipeline(
            qa("question: Optional[str] -> answer"), data=[{"question": None}], lm=live_lm(provider)
        )
    finally:
        shutdown_local_pools()
    assert result.rows()[0]["answer"] == "forty-two"
    assert len(provider.chat_requests) == 1


@pytest.mark.integration
def test_a_user_program_gets_null_only_for_parameters_that_accept_it(monkeypatch):
    import registry

    monkeypatch.setenv("DSPEX_TRUSTED_IMPORT_ROOTS", '["fixtures_pkg"]')
    registry.register_user_module("fixtures_pkg.programs_io:Answerer")  # forward(question, context="")
    spec = PipelineSpec.model_validate(
        {
            "name": "program-inputs",
            "steps": [
                {
                    "module": "fixtures_pkg.programs_io:Answerer",
                    "inputs": {"question": "question", "context": "context"},
                }
            ],
        }
    )
    data = [{"question": "q", "context": None}, {"question": None, "context": "c"}]
    try:
        result = run_pipeline(spec, data=data, lm=dspy.utils.DummyLM([]), continue_on_error=True)
    finally:
        shutdown_local_pools()
    rows = result.rows()
    assert rows[0]["answer"] == "A:q", rows[0]  # a null context keeps forward's default ""
    assert rows[1]["_error"]["message"].startswith("row 1: field 'question' is null"), rows[1]


@pytest.mark.integration
def test_every_row_lacking_a_field_is_still_refused_before_the_run(provider):
    from dspex.exceptions import InputValidationError

    with pytest.raises(InputValidationError, match="every row lacks"):
        run_pipeline(qa(), data=[{"query": "a"}, {"query": "b"}], lm=live_lm(provider))
    assert provider.chat_requests == []


def test_jsonl_rows_keep_fields_the_first_row_lacks(tmp_path):
    from tasks.payloads import read_rows

    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    assert read_rows(str(path)) == [
        {"question": "a", "query": None},
        {"question": None, "query": "b"},
        {"question": None, "query": None},
    ]


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_cli_run_refuses_bad_rows_and_runs_the_others(provider, tmp_path_factory, tmp_path):
    from tests.deployments.cluster import Cluster

    cluster = Cluster(tmp_path_factory.mktemp("inputs"))
    (tmp_path / "spec.json").write_text(
        json.dumps({"name": "inputs-check", "steps": [qa().steps[0].model_dump()]})
    )
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    env = cluster.env | {
        "DSPEX_HOME": str(tmp_path / "home"),
        "DSPEX_DATA_ROOTS": json.dumps([str(tmp_path)]),
        "DSPEX_PAYLOAD_URL": str(tmp_path / "home" / "payloads"),
        "DSPEX_LM_MODEL": "openai/test-model",
        "DSPEX_LM_API_BASE": provider.base_url,
        "OPENAI_API_KEY": "sk-test",
        "DSPEX_LM_CACHE": "false",
    }
    try:
        cluster.start_server()
        done = subprocess.run(
            [str(Path(sys.executable).parent / "dspex"), "run", "spec.json", "data.jsonl", "-o", "out.jsonl"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            timeout=240,
            check=False,
        )
    finally:
        cluster.close()
    console = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode == 0, console
    assert "3 rows in, 1 completed, 2 failed" in console
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert rows[0]["answer"] == "forty-two"
    assert rows[1]["query"] == "b"
    assert rows[1]["_error"]["message"].startswith("row 1: field 'question' is null"), rows[1]
    assert rows[2]["_error"]["message"].startswith("row 2: field 'question' is null"), rows[2]
    assert len(provider.chat_requests) == 1
    assert not [text for text in sent_texts(provider) if "None" in text]
