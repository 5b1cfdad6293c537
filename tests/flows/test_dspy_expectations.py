"""Issue 24: what a DSPy user expects of a run, tested where the user enters.

Real flows on the session's test server; LM calls go over HTTP to the loopback OpenAI-compatible
server (tests/support/openai_server.py), which counts the requests it served, or to DSPy's DummyLM.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dspy
import pytest
from support.openai_server import openai_server

from flows import PipelineSpec, run_pipeline, stream_pipeline
from flows.engine.pools import shutdown_local_pools

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

QA = {"name": "qa", "steps": [{"module": "dspy.Predict", "signature": "question -> answer"}]}


@pytest.fixture(autouse=True)
def _fresh_pools():
    yield
    shutdown_local_pools()


def _lm(server) -> dspy.LM:
    return dspy.LM("openai/test-model", api_base=server.base_url, api_key="sk-test", cache=False)


def _questions(n: int) -> list[dict[str, str]]:
    return [{"question": f"What is item {i}?"} for i in range(n)]


# --- item 1: usage of streamed and pipelined runs --------------------------------------------------


def test_streamed_and_pipelined_runs_report_every_request():
    # Original failure: 40 rows, 40 requests served, summary.usage.requests == 8 (the first chunk's).
    spec = PipelineSpec.model_validate(QA)
    with openai_server() as server:
        stream = stream_pipeline(spec, data=_questions(40), lm=_lm(server), chunk_rows=8, resume=False)
        assert len(list(stream)) == 40
        streamed = len(server.chat_requests)
        assert streamed == 40
        assert stream.result.summary.usage.requests == streamed
        (step,) = stream.result.summary.steps
        assert step.usage.requests == streamed

        server.reset()
        pipelined = run_pipeline(
            spec, data=_questions(40), lm=_lm(server), pipelined=True, chunk_rows=8, resume=False
        )
        assert pipelined.summary.usage.requests == len(server.chat_requests) == 40
        assert pipelined.summary.usage.prompt_tokens == server.served_usage["prompt_tokens"]


# --- item 7: continue on error, with a failure budget ----------------------------------------------


def _flaky_spec(**extra):
    return PipelineSpec.model_validate(
        {
            "name": "flaky",
            "steps": [{"module": "dspy.Predict", "signature": "question -> answer", "batch_size": 4}],
            **extra,
        }
    )


def test_a_failing_row_is_recorded_and_the_others_complete_by_default():
    # Original failure: the run raised StepExecutionError and the failed row's batch-mates ended
    # NotAttempted. Now, as with dspy.Parallel / dspy.Evaluate: one failure, the rest complete.
    from support.openai_server import Fault

    with openai_server() as server:
        server.enqueue(Fault.error(400, "bad request (injected)"))  # not retryable: the row fails for good
        state = run_pipeline(
            _flaky_spec(), data=_questions(12), lm=_lm(server), resume=False, return_state=True
        )
    result = state.result()
    assert result.summary.failed == 1 and result.summary.rows_out == 11
    assert result.summary.not_attempted == 0
    assert state.is_completed() and state.message == "1 of 12 row(s) failed; 11 completed"


def test_more_than_max_errors_failures_stop_the_run():
    from support.openai_server import Fault

    from dspex.exceptions import StepExecutionError

    with openai_server() as server:
        server.enqueue(*[Fault.error(400, "bad request (injected)")] * 3)
        with pytest.raises(StepExecutionError, match="more than max_errors=2 rows failed"):
            run_pipeline(_flaky_spec(max_errors=2), data=_questions(40), lm=_lm(server), resume=False)
        served = len(server.chat_requests)
    assert served < 40  # the run stopped: later batches never started

    with openai_server() as server:  # pipelined: the chunks share one budget
        server.enqueue(*[Fault.error(400, "bad request (injected)")] * 3)
        with pytest.raises(StepExecutionError, match="more than max_errors=2 rows failed"):
            run_pipeline(
                _flaky_spec(max_errors=2),
                data=_questions(80),
                lm=_lm(server),
                resume=False,
                pipelined=True,
                chunk_rows=8,
            )
        assert len(server.chat_requests) < 80


# --- item 8: dspy.configure(lm=...) is the LM when nothing else is named -------------------------


def test_the_lm_dspy_configure_set_answers_when_none_is_given():
    # Original failure: 0 requests to the configured LM; the offline LM answered silently.
    spec = PipelineSpec.model_validate(QA)
    with openai_server() as server:
        dspy.configure(lm=_lm(server))
        result = run_pipeline(spec, data=_questions(5), resume=False)
        assert len(server.chat_requests) == 5
    assert result.summary.lm["model"] == "openai/test-model"
    assert result.summary.usage.requests == 5


def dspex_run(tmp_path: Path, spec: dict, rows: list[dict], env: dict[str, str] | None = None):
    """`dspex run SPEC DATA` as a user types it, in its own process, on the session's test server."""
    from prefect.settings import PREFECT_API_URL

    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    environ = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "COLUMNS": "200",
        **(env or {}),
    }
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "from deployments.console import main; main()",
            "run",
            "spec.json",
            "data.jsonl",
        ],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_dspex_run_warns_when_the_offline_lm_answers(tmp_path):
    done = dspex_run(tmp_path, QA, _questions(2))
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout + done.stderr
    # Original failure: "INFO ... LM: dspex/offline-extractive (offline, ...; set DSPEX_LM_MODEL ...)".
    lines = [line for line in printed.splitlines() if "offline" in line and "DSPEX_LM_MODEL" in line]
    assert lines and all("WARNING" in line for line in lines), printed[-3000:]


# --- items 4, 5, 6: user programs as DSPy users write them ------------------------------------------

RETURNS = "fixtures_pkg.programs_returns"


@pytest.fixture
def programs(monkeypatch):
    import registry

    monkeypatch.setenv("DSPEX_TRUSTED_IMPORT_ROOTS", '["fixtures_pkg"]')
    for name in ("Styled", "Hidden", "Texter", "Bare", "Typed", "Dicty", "Weird"):
        registry.register_user_module(f"{RETURNS}:{name}")


def test_a_programs_outputs_are_visible_to_later_steps(programs):
    # Original failure: InputValidationError, "rows lack fields the steps read (['answer'])": the
    # template's `answer` was not known to come from the program without an `outputs` mapping.
    from dspy.utils.dummies import DummyLM

    spec = PipelineSpec.model_validate(
        {
            "name": "hidden",
            "steps": [
                {"module": f"{RETURNS}:Hidden"},
                {"native": "template", "template": "{{ answer }}!", "output": "shout"},
            ],
        }
    )
    assert spec.required_inputs() == ["question"]
    result = run_pipeline(spec, data=[{"question": "q"}], lm=DummyLM([{"answer": "yes"}]), resume=False)
    assert result.rows()[0]["shout"] == "yes!"


def test_optional_forward_parameters_get_the_rows_fields(programs):
    # Original failure: both rows answered "plain:..." although the first carries style "formal".
    spec = PipelineSpec.model_validate({"name": "styled", "steps": [{"module": f"{RETURNS}:Styled"}]})
    result = run_pipeline(
        spec, data=[{"question": "q1", "style": "formal"}, {"question": "q2"}], resume=False
    )
    assert [r["answer"] for r in result.rows()] == ["formal:q1", "plain:q2"]


def test_a_forward_may_return_str_dict_or_a_pydantic_model(programs):
    # Original failure: AttributeError: 'str' object has no attribute 'keys' on every row.
    from dspy.utils.dummies import DummyLM

    def one(name, lm=None):
        spec = PipelineSpec.model_validate({"name": name.lower(), "steps": [{"module": f"{RETURNS}:{name}"}]})
        return run_pipeline(spec, data=[{"question": "q"}], lm=lm, resume=False)

    assert one("Texter", DummyLM([{"answer": "from the LM"}])).rows()[0]["answer"] == "from the LM"
    assert one("Bare").rows()[0]["output"] == "bare:q"
    assert one("Dicty").rows()[0]["answer"] == "dict:q"
    row = one("Typed").rows()[0]
    assert (row["label"], row["score"]) == ("Q", 1.0)
    weird = one("Weird").summary
    (failure,) = weird.failures
    assert failure.type == "ProgramOutputError" and "returned a builtins.int" in failure.message


# --- item 2: resume keys on the program's code -------------------------------------------------------

_PROGRAM = """
import dspy


class Versioned(dspy.Module):
    def __init__(self):
        super().__init__()
        self.respond = dspy.Predict("question -> answer")

    def forward(self, question):
        return dspy.Prediction(answer="{version}:" + self.respond(question=question).answer)
"""

_RUN = """
import json, sys
import dspex.bootstrap
import dspy
import registry
from flows import PipelineSpec, run_pipeline

registry.register_user_module("userpkg_i24.program:Versioned")
spec = PipelineSpec.model_validate({"name": "versioned", "steps": [{"module": "userpkg_i24.program:Versioned"}]})
lm = dspy.LM("openai/test-model", api_base=sys.argv[1], api_key="sk-test", cache=False)
result = run_pipeline(spec, data=[{"question": f"What is item {i}?"} for i in range(4)], lm=lm)
print(json.dumps({"answers": [r["answer"] for r in result.rows()], "reused": result.summary.reused_rows}))
"""


@pytest.mark.slow
def test_resume_runs_an_edited_program_again(tmp_path):
    # Original failure: after the edit, 0 requests and the old "v1:" answers came back.
    from prefect.settings import PREFECT_API_URL

    package = tmp_path / "code" / "userpkg_i24"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path / "code"), str(ROOT)]),
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "DSPEX_TRUSTED_IMPORT_ROOTS": '["userpkg_i24"]',
        "DSPEX_HOME": str(tmp_path / "home"),  # one home for both runs: the resume store is shared
    }

    def run(server, version):
        (package / "program.py").write_text(_PROGRAM.format(version=version))
        server.reset()
        done = subprocess.run(
            [sys.executable, "-c", _RUN, server.base_url],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1]), len(server.chat_requests)

    with openai_server() as server:
        first, paid = run(server, "v1")
        assert paid == 4 and all(a.startswith("v1:") for a in first["answers"])
        again, paid = run(server, "v1")  # unchanged code: every row is reused
        assert paid == 0 and again["answers"] == first["answers"] and again["reused"] == 4
        edited, paid = run(server, "v2")
    assert paid == 4 and all(a.startswith("v2:") for a in edited["answers"])
    assert edited["reused"] == 0


# --- item 3: an output named like an input ---------------------------------------------------------

SELF_SCORED = {
    "name": "self_scored",
    "steps": [
        {"module": "dspy.Predict", "signature": "question -> answer"},
        {"native": "metric", "metric": "exact_match", "prediction": "answer", "gold": "answer"},
    ],
}
GOLD_ROWS = [
    {"question": "What is 2+2?", "answer": "4"},
    {"question": "Capital of France?", "answer": "Paris"},
]


def test_a_metric_reading_overwritten_gold_labels_is_refused_before_any_lm_call():
    # Original failure: exact_match 1.0 on every row: the model's answers scored against themselves.
    from dspex.exceptions import PipelineSpecError

    with openai_server() as server:
        with pytest.raises(PipelineSpecError, match=r"gold labels from field 'answer'.*'predict' overwrites"):
            run_pipeline(
                PipelineSpec.model_validate(SELF_SCORED), data=GOLD_ROWS, lm=_lm(server), resume=False
            )
        assert server.chat_requests == []
    with pytest.raises(ValueError, match="overwrites"):  # with declared inputs: when the spec is built
        PipelineSpec.model_validate({**SELF_SCORED, "inputs": ["question", "answer"]})
    # The documented way to keep the labels: map the output elsewhere.
    kept = {
        **SELF_SCORED,
        "steps": [
            {"module": "dspy.Predict", "signature": "question -> answer", "outputs": {"answer": "predicted"}},
            {"native": "metric", "metric": "exact_match", "prediction": "predicted", "gold": "answer"},
        ],
    }
    from dspy.utils.dummies import DummyLM

    rows = run_pipeline(
        PipelineSpec.model_validate(kept), data=GOLD_ROWS, lm=DummyLM([{"answer": "4"}, {"answer": "Rome"}])
    ).rows()
    assert [(r["answer"], r["predicted"], r["exact_match"]) for r in rows] == [
        ("4", "4", 1.0),
        ("Paris", "Rome", 0.0),
    ]


def test_an_overwritten_input_field_is_warned_about(caplog):
    from dspy.utils.dummies import DummyLM

    result = run_pipeline(PipelineSpec.model_validate(QA), data=GOLD_ROWS, lm=DummyLM([{"answer": "x"}] * 2))
    assert result.summary.rows_out == 2
    warned = [
        r for r in caplog.records if r.levelname == "WARNING" and "writes field 'answer'" in r.getMessage()
    ]
    assert warned and "outputs: {answer: new_name}" in warned[0].getMessage()


@pytest.mark.slow
def test_dspex_run_refuses_self_scoring(tmp_path):
    done = dspex_run(tmp_path, SELF_SCORED, GOLD_ROWS)
    assert done.returncode == 2, (done.stdout + done.stderr)[-3000:]
    assert "field 'answer'" in " ".join((done.stdout + done.stderr).split())
