"""Pipelined execution and stream_pipeline: completeness, order, no barrier behind a slow batch, SIGINT.

Real flows on the session's test server; the LM is DSPy's DummyLM or a real dspy.LM over HTTP to the
loopback OpenAI-compatible server (tests/support/openai_server.py) answering like the offline LM.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import dspy
import pytest
from dspy.utils.dummies import DummyLM
from support.openai_server import openai_server

from dspex.exceptions import InputValidationError
from flows import PipelineSpec, run_pipeline, stream_pipeline
from flows.engine.pools import shutdown_local_pools
from flows.engine.spec import ModuleStep, NativeStep
from flows.engine.streaming import _segments, default_chunk_rows, is_barrier
from tasks.lm.offline import respond

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[3]

TWO_STEPS = {
    "name": "two",
    "steps": [
        {"module": "dspy.Predict", "signature": "question -> answer"},
        {"native": "template", "template": "{{ answer }}!", "output": "shout"},
    ],
}


@pytest.fixture(autouse=True)
def _fresh_pools():
    yield
    shutdown_local_pools()


def keyed_lm(n):
    return DummyLM({f"<<q{i}>>": {"answer": f"a{i}"} for i in range(n)})


def rows(n):
    return [{"question": f"<<q{i}>>"} for i in range(n)]


def _offline(messages, delay_if="slow", delay=0.0):
    if delay and any(delay_if in text for _, text in messages):
        time.sleep(delay)
    system = "\n".join(t for r, t in messages if r in ("system", "developer")) or None
    return respond(system, [(r, t) for r, t in messages if r not in ("system", "developer")])


def test_every_row_exactly_once_and_the_output_in_input_order():
    spec = PipelineSpec.model_validate(TWO_STEPS)
    stream = stream_pipeline(spec, data=rows(120), lm=keyed_lm(120), chunk_rows=10)
    seen = list(stream)
    assert sorted(r["_row"] for r in seen) == list(range(120))  # each once
    assert all(r["answer"] == f"a{r['_row']}" and r["shout"] == f"a{r['_row']}!" for r in seen)
    out = stream.result.rows()
    assert [r["_row"] for r in out] == list(range(120))
    assert stream.result.summary.rows_out == 120
    steps = {s.step: s for s in stream.result.summary.steps}
    assert steps["predict"].rows == 120 and steps["predict"].batches >= 12  # one record per step
    spooled = [json.loads(line) for line in stream.partial_path.read_text().splitlines()]
    assert spooled == seen


def test_pipelined_run_gives_the_barrier_engines_rows():
    spec = PipelineSpec.model_validate(TWO_STEPS)
    barrier = run_pipeline(spec, data=rows(40), lm=keyed_lm(40)).rows()
    pipelined = run_pipeline(spec, data=rows(40), lm=keyed_lm(40), pipelined=True, chunk_rows=7).rows()
    assert pipelined == barrier


def test_a_slow_batch_holds_back_only_its_own_rows():
    spec = PipelineSpec.model_validate(
        {
            "name": "qa",
            "steps": [{"module": "dspy.Predict", "signature": "question -> answer", "batch_size": 4}],
        }
    )
    data = [{"question": f"q{i} {'slow' if i < 4 else 'fast'}?"} for i in range(32)]
    with openai_server(responder=lambda m: _offline(m, delay=3.0)) as server:
        lm = dspy.LM("openai/test-model", api_base=server.base_url, api_key="sk-test", cache=False)
        start = time.perf_counter()
        arrivals = [
            (time.perf_counter() - start, row["_row"])
            for row in stream_pipeline(spec, data, lm=lm, chunk_rows=4)
        ]
    first_at, first_row = arrivals[0]
    slow_at = max(t for t, r in arrivals if r < 4)
    assert first_row >= 4 and first_at < 2.5 < slow_at  # fast chunks came out before the slow one
    assert sorted(r for _, r in arrivals) == list(range(32))


def test_bad_input_is_raised_by_the_iteration():
    stream = stream_pipeline(PipelineSpec.model_validate(TWO_STEPS), data=[{"nope": 1}], lm=keyed_lm(1))
    with pytest.raises(InputValidationError):
        list(stream)


def test_optimizer_pool_steps_are_barriers():
    predict = ModuleStep(module="dspy.Predict", signature="question -> answer")
    tune = ModuleStep(module="dspy.Predict", signature="answer -> better", pool="optimizer")
    native = NativeStep(native="template", template="{{ better }}", output="x")
    assert not is_barrier(predict) and is_barrier(tune)
    assert _segments([predict, native, tune, native]) == [
        (False, [predict, native]),
        (True, [tune]),
        (False, [native]),
    ]
    assert default_chunk_rows(2000) == 63 and default_chunk_rows(10) == 8


_INTERRUPTED = """
import json, os, sys
import dspex.bootstrap
import dspy
from flows import PipelineSpec, stream_pipeline

spec = PipelineSpec.model_validate({"name": "qa", "steps": [{"module": "dspy.Predict", "signature": "question -> answer"}]})
lm = dspy.LM("openai/test-model", api_base=sys.argv[1], api_key="sk-test", cache=False)
stream = stream_pipeline(spec, [{"question": f"q{i} slow?"} for i in range(200)], lm=lm, chunk_rows=2)
print(json.dumps({"spool": str(stream.partial_path)}), flush=True)
try:
    for row in stream:
        # One write per line (print writes the text and the newline apart, and Ctrl-C may land
        # between them), as `dspex run --stream` does.
        sys.stdout.write(json.dumps(row) + "\\n")
        sys.stdout.flush()
except KeyboardInterrupt:
    print(json.dumps({"interrupted": True}), flush=True)
    raise
"""


def test_sigint_during_a_stream_leaves_the_partial_output_readable():
    from prefect.settings import PREFECT_API_URL

    with (
        openai_server(responder=lambda m: _offline(m, delay=0.3)) as server,
        tempfile.TemporaryFile("w+") as errors,
    ):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_API_URL": str(PREFECT_API_URL.value())}
        proc = subprocess.Popen(
            [sys.executable, "-c", _INTERRUPTED, server.base_url],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        )
        assert proc.stdout is not None
        spool = Path(json.loads(proc.stdout.readline())["spool"])
        printed = [json.loads(proc.stdout.readline()) for _ in range(4)]
        proc.send_signal(signal.SIGINT)
        # Read the rest through the same buffered stream (communicate() would read the pipe itself
        # and miss the lines readline() already buffered); a watchdog bounds the wait.
        watchdog = threading.Timer(60, proc.kill)
        watchdog.start()
        try:
            rest = proc.stdout.read()
            proc.wait()
        finally:
            watchdog.cancel()
            proc.stdout.close()
        errors.seek(0)
        err = errors.read()
    assert proc.returncode != 0  # the interrupt propagated
    lines = [json.loads(line) for line in rest.splitlines()]
    assert lines[-1] == {"interrupted": True}, err[-2000:]
    printed += lines[:-1]
    spooled = [json.loads(line) for line in spool.read_text().splitlines()]  # every line whole JSON
    assert len(spooled) < 200
    assert printed == spooled[: len(printed)]
    assert all(r["answer"] for r in spooled)
