"""Issue 13 item 13: a field read only by a condition's predicate is optional.

Original failure: ``when: {field: n, op: exists}`` was rejected up front when a row lacked ``n``
(``InputValidationError``), so ``exists`` could never be false.
"""

from __future__ import annotations

import pytest
from dspy.utils.dummies import DummyLM

from flows import PipelineSpec, run_pipeline
from flows.engine.pools import shutdown_local_pools

SPEC = {
    "name": "optional-predicate",
    "steps": [
        {
            "name": "has_n",
            "when": {"field": "n", "op": "exists"},
            "then": [{"native": "template", "template": "n={{ n }}", "output": "said"}],
            "otherwise": [{"native": "template", "template": "no n for {{ who }}", "output": "said"}],
        }
    ],
}


def test_predicate_fields_are_not_required_inputs():
    spec = PipelineSpec.model_validate(SPEC)
    assert spec.required_inputs() == []  # was ["n"]: every row had to carry the field it tests
    nested = PipelineSpec.model_validate(
        {
            "name": "nested",
            "steps": [
                {
                    "when": {"field": "meta.flag", "op": "truthy"},
                    "then": [{"module": "dspy.Predict", "signature": "question -> answer"}],
                }
            ],
        }
    )
    assert nested.required_inputs() == ["question"]  # the branch's own inputs stay required


@pytest.mark.integration
def test_exists_is_false_for_rows_without_the_field():
    rows = [{"n": 1, "who": "a"}, {"who": "b"}, {"n": None, "who": "c"}]
    try:
        out = run_pipeline(PipelineSpec.model_validate(SPEC), data=rows, lm=DummyLM([])).rows()
    finally:
        shutdown_local_pools()
    assert [r["said"] for r in out] == ["n=1", "no n for b", "n=None"]
    assert [r["has_n_path"] for r in out] == ["then", "otherwise", "then"]
