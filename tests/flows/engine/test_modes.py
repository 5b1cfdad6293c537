"""The mode decision of orchestrating flows (`flows.engine.modes`): auto, local, distributed.

The decision logic runs against an in-memory stand-in of the three Prefect API reads it makes (work
pool, run-step deployment, workers); the e2e test (tests/deployments/test_e2e_deployments.py) checks
the same decision against a real server with real workers. One integration test runs a real flow on
the session's test server, which has no pools: auto runs locally and says so.
"""

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from dspy.utils.dummies import DummyLM

from dspex.settings import get_settings
from flows import PipelineSpec, run_pipeline
from flows.engine.modes import needed_pools, resolve_mode
from flows.engine.ownership import record_owned
from flows.rag import rag_spec


@pytest.fixture(autouse=True)
def _project_owns_its_pools():
    """The pools and run-step deployments FakeApi shows were made by `dspex pools create` / `deploy`."""
    for pool in ("general", "optimizer", "gpu"):
        record_owned("pools", f"pool-{pool}", pool)
        record_owned("deployments", f"deployment-{pool}", f"run-step/run-step-{pool}")


class FakeApi:
    """Pools with a run-step deployment and workers whose last heartbeat is ``age`` seconds old;
    pools in ``foreign`` are another account's look-alikes (ids this project never recorded)."""

    def __init__(self, live=(), stale=(), no_deployment=(), paused=(), missing=(), foreign=()):
        self.live, self.stale, self.no_deployment = set(live), set(stale), set(no_deployment)
        self.paused, self.missing, self.foreign = set(paused), set(missing), set(foreign)
        self.calls = 0

    def read_work_pool(self, name):
        from prefect.exceptions import ObjectNotFound

        self.calls += 1
        if name in self.missing:
            raise ObjectNotFound(http_exc=Exception(name))
        pool_id = f"other-{name}" if name in self.foreign else f"pool-{name}"
        return SimpleNamespace(id=pool_id, name=name, is_paused=name in self.paused)

    def read_deployment_by_name(self, name):
        from prefect.exceptions import ObjectNotFound

        pool = name.rsplit("-", 1)[-1]
        if pool in self.no_deployment:
            raise ObjectNotFound(http_exc=Exception(name))
        return SimpleNamespace(id=f"deployment-{pool}", name=name, work_pool_name=pool)

    def read_workers_for_work_pool(self, pool):
        now = datetime.now(UTC)
        if pool in self.live:
            return [SimpleNamespace(name=f"{pool}-1", last_heartbeat_time=now, heartbeat_interval_seconds=5)]
        if pool in self.stale:
            old = now - timedelta(seconds=120)
            return [SimpleNamespace(name=f"{pool}-1", last_heartbeat_time=old, heartbeat_interval_seconds=5)]
        return []


class BrokenApi:
    def read_work_pool(self, name):
        raise ConnectionError("connection refused")


def test_explicit_modes_win_and_never_ask_the_api():
    api = FakeApi()
    settings = get_settings()
    assert resolve_mode("local", settings, ["general"], client=api).mode == "local"
    assert resolve_mode("distributed", settings, ["general"], client=api).mode == "distributed"
    assert api.calls == 0


def test_dspex_mode_set_explicitly_is_obeyed_under_auto(monkeypatch):
    monkeypatch.setenv("DSPEX_MODE", "distributed")
    decision = resolve_mode("auto", get_settings(), ["general"], client=FakeApi())
    assert decision.mode == "distributed" and "DSPEX_MODE" in decision.reason


def test_auto_dispatches_when_every_needed_pool_has_a_live_worker():
    decision = resolve_mode(
        "auto", get_settings(), ["gpu", "general"], client=FakeApi(live={"general", "gpu"})
    )
    assert decision.mode == "distributed" and decision.unavailable == {}


def test_auto_falls_back_to_general_for_a_pool_without_live_workers():
    api = FakeApi(live={"general"}, stale={"gpu"})
    decision = resolve_mode("auto", get_settings(), ["gpu", "general"], client=api)
    assert decision.mode == "distributed"
    assert list(decision.unavailable) == ["gpu"] and "no live worker" in decision.unavailable["gpu"]
    assert "fall back to 'general'" in decision.reason


@pytest.mark.parametrize(
    ("api", "why"),
    [
        (FakeApi(missing={"general", "gpu"}), "does not exist"),
        (FakeApi(live={"gpu"}, paused={"general"}), "is paused"),
        (FakeApi(live={"gpu"}, no_deployment={"general"}), "run-step-general"),
        (FakeApi(), "no live worker"),
        (BrokenApi(), "did not answer"),
    ],
)
def test_auto_runs_locally_with_the_reason_when_general_cannot_take_work(api, why):
    decision = resolve_mode("auto", get_settings(), ["gpu", "general"], client=api)
    assert decision.mode == "local"
    assert why in decision.reason and "general" in decision.unavailable


def test_auto_never_dispatches_to_a_pool_this_project_did_not_create():
    # another account's pool `general` with a live worker: not a fallback target either (issue 23)
    decision = resolve_mode(
        "auto",
        get_settings(),
        ["gpu", "general"],
        client=FakeApi(live={"general", "gpu"}, foreign={"general"}),
    )
    assert decision.mode == "local"
    assert "was not created by this project" in decision.unavailable["general"]
    decision = resolve_mode(
        "auto", get_settings(), ["gpu", "general"], client=FakeApi(live={"general", "gpu"}, foreign={"gpu"})
    )
    assert decision.mode == "local" and list(decision.unavailable) == ["gpu"]


def test_auto_with_fail_policy_runs_locally_rather_than_fail_a_partly_served_pipeline(monkeypatch):
    monkeypatch.setenv("DSPEX_FALLBACK_POLICY", "fail")
    api = FakeApi(live={"general"})
    decision = resolve_mode("auto", get_settings(), ["gpu", "general"], client=api)
    assert decision.mode == "local" and list(decision.unavailable) == ["gpu"]


def test_needed_pools_follow_the_registry_and_step_overrides():
    settings = get_settings()
    assert needed_pools(rag_spec().steps, settings) == ["gpu", "general"]
    spec = PipelineSpec.model_validate(
        {
            "name": "p",
            "steps": [
                {"module": "dspy.Predict", "signature": "question -> answer", "pool": "optimizer"},
                {"native": "metric", "metric": "exact_match", "prediction": "answer", "gold": "gold"},
            ],
        }
    )
    assert needed_pools(spec.steps, settings) == ["optimizer"]
    native = PipelineSpec.model_validate(
        {"name": "n", "steps": [{"native": "template", "template": "{{ q }}", "output": "t"}]}
    )
    assert (
        resolve_mode("auto", settings, needed_pools(native.steps, settings), client=BrokenApi()).mode
        == "local"
    )


@pytest.mark.integration
def test_a_flow_in_auto_mode_runs_locally_on_a_server_without_pools():
    spec = PipelineSpec.model_validate(
        {"name": "auto-qa", "steps": [{"module": "dspy.Predict", "signature": "question -> answer"}]}
    )
    lm = DummyLM({"<<q0>>": {"answer": "a0"}, "<<q1>>": {"answer": "a1"}})
    result = run_pipeline(spec, data=[{"question": "<<q0>>"}, {"question": "<<q1>>"}], lm=lm)
    assert result.summary.mode == "local"
    assert [r["answer"] for r in result.rows()] == ["a0", "a1"]


@pytest.mark.integration
def test_a_batch_inside_a_run_step_never_dispatches_again(monkeypatch, tmp_path):
    import prefect.deployments

    from flows.engine import distributed
    from flows.engine.step_runner import read_batch_result, run_step
    from tasks.payloads import write_payload

    def no_dispatch(*args, **kwargs):
        raise AssertionError("a run-step dispatched its batch again")

    monkeypatch.setenv("DSPEX_MODE", "distributed")  # even when the worker's environment says so
    monkeypatch.setenv("DSPEX_PAYLOAD_URL", str(tmp_path / "payloads"))
    monkeypatch.setattr(prefect.deployments, "run_deployment", no_dispatch)
    monkeypatch.setattr(distributed.RemoteDispatcher, "__call__", no_dispatch)
    step = {"kind": "module", "name": "predict", "module": "dspy.Predict", "signature": "question -> answer"}
    batch = write_payload([{"question": "What is DSPy?", "_row": 0}])
    run_step(step=step, batch=batch, batch_key="never-again-1", pool="general")
    found = read_batch_result("never-again-1")
    assert found is not None and found[1].failed == 0 and found[1].outputs[0]["answer"]
