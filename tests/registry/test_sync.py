"""Issue 13 item 2: saving the registry is read-merge-write under a file lock; nothing is lost.

Original failure: each process wrote back the whole registry it loaded at start, so a
``dspex registry register`` made while a pipeline ran was erased when the pipeline saved, and two
concurrent pipelines erased each other's learned estimates.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from registry import ModuleRegistry

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def path(tmp_path):
    return tmp_path / "registry.json"


def fresh(path):
    registry = ModuleRegistry(discover=False, path=path, min_samples=3)
    if path.exists():
        registry.load()
    return registry


def test_a_registration_made_while_a_pipeline_runs_survives_its_save(path):
    pipeline = fresh(path)  # loaded at start, like a long run
    cli = fresh(path)
    cli.register_user_module("acme.jobs:Late", capabilities=["tagging"])
    cli.save()
    for _ in range(3):
        pipeline.record_duration("dspy.Predict", 40.0)
    pipeline.save()
    after = fresh(path)
    assert "acme.jobs:Late" in after
    assert after.usage_stats("dspy.Predict").calls == 3
    # the pipeline's process now knows the registration too
    assert pipeline.get_module("acme.jobs:Late").capabilities == ("tagging",)


def test_two_pipelines_keep_each_others_learned_estimates(path):
    first, second = fresh(path), fresh(path)
    for _ in range(3):
        first.record_duration("dspy.Predict", 10.0, pool="general")
        second.record_duration("dspy.ChainOfThought", 20.0, pool="general")
    second.record_duration("dspy.Predict", 30.0, pool="general", success=False)
    first.save()
    second.save()
    merged = fresh(path)
    assert merged.estimate("dspy.Predict").source == "learned"
    assert merged.estimate("dspy.ChainOfThought").source == "learned"
    stats = merged.usage_stats("dspy.Predict")
    assert (stats.calls, stats.failures) == (4, 1)
    # a second save of the same process adds only what is new since its last sync
    first.save()
    assert fresh(path).usage_stats("dspy.Predict").calls == 4


def test_a_long_running_process_sees_registrations_made_by_others(path):
    running = fresh(path)
    running.record_duration("dspy.Predict", 5.0)  # unsaved, must survive the refresh
    other = fresh(path)
    other.register_user_module("acme.jobs:New")
    other.save()
    assert running.get_module("acme.jobs:New").name == "acme.jobs:New"  # found on a miss
    assert running.usage_stats("dspy.Predict").calls == 1
    assert running.refresh() is False  # nothing changed since: one stat, no read


def test_an_explicit_load_still_drops_unsaved_changes(path):
    fresh(path).save()
    registry = fresh(path)
    registry.register_user_module("other.mod:Gone")
    registry.load()
    assert "other.mod:Gone" not in registry
    registry.save()
    assert "other.mod:Gone" not in fresh(path)


WORKER = textwrap.dedent(
    """
    import sys
    from registry import ModuleRegistry

    index, path = int(sys.argv[1]), sys.argv[2]
    registry = ModuleRegistry(discover=False, path=path)
    for run in range(50):
        registry.record_duration("dspy.Predict", 1000.0 * index + run, pool="general")
        registry.record_tokens("dspy.Predict", f"model-{index}", prompt_tokens=run, completion_tokens=1, cost_usd=None)
        if run % 10 == 0:
            registry.register_user_module(f"proc{index}.jobs:Program{run}")
        registry.save()
    """
)


@pytest.mark.slow
def test_four_processes_fifty_runs_each_lose_nothing(path):
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(i), str(path)], cwd=ROOT, stderr=subprocess.PIPE, text=True
        )
        for i in range(4)
    ]
    for proc in procs:
        _out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    document = json.loads(path.read_text())
    registered = {m["name"] for m in document["modules"]}
    assert registered == {f"proc{i}.jobs:Program{r}" for i in range(4) for r in range(0, 50, 10)}
    (usage,) = [u for u in document["usage"] if u["module"] == "dspy.Predict"]
    assert usage["calls"] == 200
    (series,) = [o for o in document["observations"] if o["module"] == "dspy.Predict"]
    assert sorted(series["samples_ms"]) == sorted(1000.0 * i + r for i in range(4) for r in range(50))
    tokens = {t["model"]: t["prompt_tokens"] for t in document["tokens"]}
    assert {model: sorted(values) for model, values in tokens.items()} == {
        f"model-{i}": [float(r) for r in range(50)] for i in range(4)
    }
