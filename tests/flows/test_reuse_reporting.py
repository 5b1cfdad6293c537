"""Issues 26.2 and 26.6: a re-run that reuses every row, and the duration artifact's layout.

Before: the second run's artifact showed an error % of 36433.3 for 0 rows (the estimate of the
reused rows against the nothing that ran), its summary line did not say rows were reused, and the
duration table had 17 columns (the actual ms and error % were off screen in the UI).
"""

from __future__ import annotations

import json
import logging

import pytest
from dspy.utils.dummies import DummyLM
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort

from flows import PipelineSpec, run_pipeline
from flows.engine.pools import shutdown_local_pools
from flows.telemetry.artifacts import DURATION_COLUMNS, details_key, duration_key, duration_rows

pytestmark = pytest.mark.integration

SPEC = {"name": "reuse-check", "steps": [{"module": "dspy.Predict", "signature": "question -> answer"}]}


@pytest.fixture(autouse=True)
def _fresh_pools():
    yield
    shutdown_local_pools()


def _latest_table(key: str) -> list[dict]:
    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    data = artifact.data
    return json.loads(data) if isinstance(data, str) else data


def test_a_rerun_that_reuses_every_row_reports_reuse_not_an_estimate_error(caplog, tmp_path, monkeypatch):
    monkeypatch.setenv("DSPEX_HOME", str(tmp_path / "home"))
    rows = [{"question": f"q{i}"} for i in range(40)]
    spec = PipelineSpec.model_validate(SPEC)
    lm = DummyLM([{"answer": "a"}] * 80)  # one LM: a DummyLM is keyed by identity for resume
    first = run_pipeline(spec, data=rows, lm=lm)
    (seeded,) = duration_rows(first.summary.steps)
    assert seeded["estimate"] == "seed"  # a first run's static estimate says what it is
    # The first table: what a user reads first, and no more; the rest is in the details table.
    assert list(_latest_table(duration_key("reuse-check"))[0]) == list(DURATION_COLUMNS)
    details = _latest_table(details_key("reuse-check"))[0]
    assert details["step"] == "predict" and "batches" in details and "actual tokens" in details

    with caplog.at_level(logging.INFO):
        again = run_pipeline(spec, data=rows, lm=lm)
    (record,) = again.summary.steps
    assert again.summary.reused_rows == 40 and record.rows == 0 and record.batches == 0
    assert record.error_pct is None
    (row,) = duration_rows(again.summary.steps)
    assert (row["rows"], row["error %"], row["estimate"], row["reused rows"]) == (0, "-", "reused", 40)
    assert _latest_table(duration_key("reuse-check"))[0]["error %"] == "-"
    summary = [r.getMessage() for r in caplog.records if r.getMessage().startswith("pipeline reuse-check:")]
    assert summary and "40 row(s) reused from earlier runs" in summary[-1], summary
    assert "--no-resume" in summary[-1] and "`resume` parameter" in summary[-1]
