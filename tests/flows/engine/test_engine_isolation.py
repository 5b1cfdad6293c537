"""Issue 13 item 5: parallel branches and map items never share nested dicts with their row.

Original failure: branches and map items started as shallow copies of their row, so a dotted output
(``meta.note``) wrote into the one nested dict they all shared: concurrently, into the parent row
and into the caller's data; and the dotted output was then dropped from the branch's result.
"""

from __future__ import annotations

import copy

import pytest
from dspy.utils.dummies import DummyLM

from flows import PipelineSpec, run_pipeline
from flows.engine.pools import shutdown_local_pools
from tasks.rows import set_field


def test_set_field_copies_nested_dicts_on_write():
    shared = {"src": "x"}
    row = {"meta": shared}
    branch = dict(row)  # how a branch or a map item starts
    set_field(branch, "meta.note", "A")
    assert branch["meta"] == {"src": "x", "note": "A"}
    assert shared == {"src": "x"} and row["meta"] is shared


@pytest.mark.integration
def test_branches_and_map_items_write_nested_fields_without_touching_each_other():
    spec = PipelineSpec.model_validate(
        {
            "name": "isolation",
            "continue_on_error": True,
            "steps": [
                {
                    "name": "branches",
                    "parallel": {
                        "a": [{"native": "template", "template": "A {{ meta.src }}", "output": "meta.note"}],
                        "b": [{"native": "template", "template": "B {{ meta.src }}", "output": "meta.note"}],
                    },
                },
                {
                    "name": "labels",
                    "map": "items",
                    "item": "item",
                    "steps": [{"native": "template", "template": "L{{ item }}", "output": "meta.label"}],
                },
            ],
        }
    )
    data = [{"meta": {"src": f"s{i}"}, "items": [1, 2, 3]} for i in range(4)]
    before = copy.deepcopy(data)
    try:
        out = run_pipeline(spec, data=data, lm=DummyLM([])).rows()
    finally:
        shutdown_local_pools()
    assert data == before  # the caller's rows are untouched
    for i, row in enumerate(out):
        assert row["meta"] == {"src": f"s{i}"}  # the parent row's nested dict too
        assert row["a"]["meta"]["note"] == f"A s{i}"
        assert row["b"]["meta"]["note"] == f"B s{i}"
        assert [item["meta"]["label"] for item in row["labels"]] == ["L1", "L2", "L3"]
