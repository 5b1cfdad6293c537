"""prefect.yaml: anchors resolve, every entrypoint imports as a Prefect flow, one run-step per pool."""

import importlib
from pathlib import Path

import pytest
from prefect.flows import Flow

from deployments.serve import load_project, runner_deployments, user_facing_entries

ROOT = Path(__file__).resolve().parents[1]
PROJECT = load_project(ROOT / "prefect.yaml")


@pytest.mark.parametrize("entry", PROJECT["deployments"], ids=lambda d: d["name"])
def test_every_entrypoint_imports_as_a_flow(entry):
    path, _, attr = entry["entrypoint"].partition(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    assert isinstance(getattr(module, attr), Flow)
    assert entry["work_pool"]["name"] in ("general", "optimizer", "gpu")


def test_one_run_step_deployment_per_pool_on_its_own_pool():
    run_steps = {
        d["name"]: d
        for d in PROJECT["deployments"]
        if d["entrypoint"] == "flows/engine/step_runner.py:run_step"
    }
    assert set(run_steps) == {"run-step-general", "run-step-optimizer", "run-step-gpu"}
    for name, entry in run_steps.items():
        pool = name.removeprefix("run-step-")
        assert entry["work_pool"]["name"] == pool and entry["parameters"]["pool"] == pool


def test_schedules_come_from_the_definitions_block_with_cron_and_interval():
    schedules = [s for d in PROJECT["deployments"] for s in d.get("schedules") or []]
    assert any("cron" in s for s in schedules) and any("interval" in s for s in schedules)
    assert set(PROJECT["definitions"]["work_pools"]) == {"general", "optimizer", "gpu"}


def test_serve_builds_runner_deployments_for_the_user_facing_flows_that_exist():
    entries = user_facing_entries(PROJECT)
    assert {"rag-qa", "run-pipeline", "batch-predict", "evaluate", "optimize"} <= {e["name"] for e in entries}
    present = [e for e in entries if (ROOT / e["entrypoint"].split(":")[0]).exists()]
    built = runner_deployments(present)
    assert [d.name for d in built] == [e["name"] for e in present]
    batch = next(d for d in built if d.name == "batch-predict")
    assert batch.schedules and batch.schedules[0].active is False


@pytest.mark.parametrize("entry", user_facing_entries(PROJECT), ids=lambda d: d["name"])
def test_every_user_facing_deployment_runs_with_its_defaults(entry):
    # What a Quick run or a schedule does: the deployment's parameters over the flow's defaults must
    # validate (no required parameter left empty), with mode auto and no raw LM object.
    path, _, attr = entry["entrypoint"].partition(":")
    flow = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), attr)
    validated = flow.validate_parameters(dict(entry.get("parameters") or {}))
    if "mode" in flow.parameters.properties:
        assert validated["mode"] == "auto"
    assert validated.get("lm") is None
