"""Issue 13 items 1, 3 and 4: nothing a run computed is lost.

Original failures: (1) a 30-row output was only ``inline:xxh3_128:...`` inside its ref, and a failed
run said ``6 completed rows kept in inline:...``; (3) rows carrying ``_error`` or a non-integer
``_row`` crashed the run after every LM call (``TypeError``/``ValueError``), and rows with an old
``_error`` were reported failed again without an LM call; (4) a failure midway (a pool gone, an
``OSError``) propagated without writing the rows completed so far.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dspy.utils.dummies import DummyLM

from dspex.exceptions import PoolUnavailableError, StepExecutionError
from flows import PipelineSpec, run_pipeline
from flows.engine.pools import shutdown_local_pools
from flows.guards.safekeeping import (
    INPUT_ERROR_FIELD,
    INPUT_ROW_FIELD,
    keep_partial,
    prepare_input_rows,
    row_number,
    store_output,
)
from tasks.payloads import read_rows

QA = {"name": "qa", "steps": [{"module": "dspy.Predict", "signature": "question -> answer"}]}
TWO = {
    "name": "two",
    "steps": [
        {"name": "first", "module": "dspy.Predict", "signature": "question -> answer"},
        {"name": "second", "module": "dspy.Predict", "signature": "answer -> verdict"},
    ],
}


def keyed_lm(n):
    return DummyLM({f"<<q{i}>>": {"answer": f"a{i}"} for i in range(n)})


def rows(n):
    return [{"question": f"<<q{i}>>"} for i in range(n)]


# --- unit: the helpers --------------------------------------------------------------------------


def test_reserved_fields_on_input_are_kept_aside_not_lost():
    data = [
        {"question": "a", "_error": {"step": "old", "type": "X", "message": "m"}},
        {"question": "b", "_error": None, "_row": "id-17"},
        {"question": "c", "_row": 41},  # a caller's row number (batch_predict) stays
        {"question": "d", "_row": True},  # a bool is not a row number
        {"question": "e"},
    ]
    assert prepare_input_rows(data) == 3
    assert [r["_row"] for r in data] == [0, 1, 41, 3, 4]
    assert data[0][INPUT_ERROR_FIELD]["step"] == "old" and "_error" not in data[0]
    assert data[1][INPUT_ROW_FIELD] == "id-17" and INPUT_ERROR_FIELD not in data[1]
    assert data[3][INPUT_ROW_FIELD] is True
    assert [row_number(r, i) for i, r in enumerate(data)] == [0, 1, 41, 3, 4]
    assert row_number({"_row": "x"}, 7) == 7


def test_store_output_is_always_a_file_even_when_tiny():
    ref = store_output([{"a": 1}])
    assert ref.is_stored and not ref.is_inline and Path(ref.uri).is_file()
    assert read_rows(ref.uri) == [{"a": 1}]


def test_keep_partial_names_the_file_in_any_error():
    data = [{"question": "q", "answer": "done"}, {"question": "r", "_error": {"step": "s"}}]
    os_error = OSError(5, "Input/output error")
    ref = keep_partial(data, os_error)
    assert ref is not None and ref.uri in str(os_error) and "[Errno 5]" in str(os_error)
    assert read_rows(ref.uri)[0]["answer"] == "done"
    leaky = RuntimeError("provider at http://bob:hunter22-secret@llm.internal/v1 hung up")
    keep_partial(data, leaky)
    assert "hunter22-secret" not in str(leaky) and "llm.internal" in str(leaky)
    pool_error = PoolUnavailableError("gpu", "its last worker died")
    keep_partial(data, pool_error)
    assert "its last worker died" in str(pool_error) and "partial output (2 rows, 1 without an error)" in str(
        pool_error
    )
    assert pool_error.partial_output.uri in str(pool_error)


# --- through real run-pipeline flows ------------------------------------------------------------


@pytest.fixture
def _pools():
    yield
    shutdown_local_pools()


@pytest.mark.integration
@pytest.mark.usefixtures("_pools")
def test_small_output_is_a_file_and_read_rows_takes_its_path():
    result = run_pipeline(PipelineSpec.model_validate(QA), data=rows(30), lm=keyed_lm(30))
    assert not result.output.uri.startswith("inline:")
    assert Path(result.output.uri).is_file()
    assert [r["answer"] for r in read_rows(result.output.uri)] == [f"a{i}" for i in range(30)]
    # the ref's JSON is accepted as data too (item 14: it used to be taken for a file name)
    again = run_pipeline(
        PipelineSpec.model_validate(QA),
        data=json.dumps(result.output.model_dump(mode="json")),
        lm=keyed_lm(30),
    )
    assert again.summary.rows_in == 30 and again.summary.failed == 0


@pytest.mark.integration
@pytest.mark.usefixtures("_pools")
def test_failed_rows_are_kept_in_a_file_the_error_names():
    lm = DummyLM({f"<<q{i}>>": {"answer": f"a{i}"} for i in range(6)})  # rows 6..9 get no answer
    with pytest.raises(StepExecutionError) as caught:
        run_pipeline(PipelineSpec.model_validate(QA), data=rows(10), lm=lm, continue_on_error=False)
    partial = caught.value.partial_ref
    assert partial is not None and not partial["uri"].startswith("inline:")
    assert partial["uri"] in str(caught.value)
    kept = read_rows(partial["uri"])
    assert [r.get("answer") for r in kept[:6]] == [f"a{i}" for i in range(6)]


@pytest.mark.integration
@pytest.mark.usefixtures("_pools")
def test_rows_fed_back_with_reserved_fields_run_again_and_never_crash():
    first = run_pipeline(
        PipelineSpec.model_validate(QA),
        data=rows(4),
        lm=DummyLM({"<<q0>>": {"answer": "a0"}}),
        continue_on_error=True,
    )
    earlier = first.rows()
    assert sum("_error" in r for r in earlier) == 3  # an earlier output with failed rows
    for r in earlier:
        r["_row"] = f"id-{r['_row']}"  # and ids in _row, as users do
    result = run_pipeline(PipelineSpec.model_validate(QA), data=earlier, lm=keyed_lm(4))
    out = result.rows()
    assert result.summary.failed == 0
    assert [r["answer"] for r in out] == ["a0", "a1", "a2", "a3"]  # every row was tried again
    assert [r["_input_row"] for r in out] == ["id-0", "id-1", "id-2", "id-3"]
    assert sum(INPUT_ERROR_FIELD in r for r in out) == 3


@pytest.mark.integration
@pytest.mark.usefixtures("_pools")
@pytest.mark.parametrize(
    "error",
    [
        OSError(5, "Input/output error reading the corpus"),
        PoolUnavailableError("gpu", "its last worker died"),
    ],
    ids=["oserror", "pool-unavailable"],
)
def test_failure_midway_writes_completed_steps_before_it_propagates(monkeypatch, error):
    import flows.pipeline

    real = flows.pipeline.run_steps

    def first_step_then_fail(steps, data, ctx):
        real(steps[:1], data, ctx)  # the engine really completes the first step...
        raise error  # ...then the second one's pool (or its corpus) is gone

    monkeypatch.setattr(flows.pipeline, "run_steps", first_step_then_fail)
    with pytest.raises(type(error)) as caught:
        run_pipeline(PipelineSpec.model_validate(TWO), data=rows(5), lm=keyed_lm(5))
    ref = caught.value.partial_output
    assert ref.uri in str(caught.value)
    assert [r["answer"] for r in read_rows(ref.uri)] == [f"a{i}" for i in range(5)]
