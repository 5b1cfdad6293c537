"""The bounded loader of user YAML/JSON (issue 20): alias bombs, deep nesting, size, named limits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from dspex.documents import check_bounds, load_document
from dspex.exceptions import PipelineSpecError, SpecLimitError
from dspex.settings import get_settings

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
SPEC = "name: qa\nsteps:\n  - module: dspy.Predict\n    signature: question -> answer\n"


def billion_laughs(levels: int = 10, fan: int = 9) -> str:
    """The classic shape: each level a list of ``fan`` aliases of the level below (9**10 'lol's)."""
    lines = ["l0: &l0 [" + ", ".join(["lol"] * fan) + "]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * fan) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def bomb_spec(levels: int = 10) -> str:
    # The bomb sits where a spec may hold free-form data (a step's demos), so nothing but its size
    # can refuse it.
    return billion_laughs(levels) + SPEC + f"    demos: *l{levels - 1}\n"


def test_billion_laughs_is_refused_fast_naming_the_node_limit() -> None:
    text = bomb_spec()
    assert len(text) < 1000
    start = time.perf_counter()
    with pytest.raises(SpecLimitError) as caught:
        load_document(text, source="spec file 'bomb.yaml'")
    assert time.perf_counter() - start < 1.0
    assert caught.value.limit == "spec_max_nodes"
    assert caught.value.code == "spec_limit_exceeded"
    assert "spec file 'bomb.yaml'" in str(caught.value)
    assert "DSPEX_SPEC_MAX_NODES=100000" in str(caught.value)
    assert isinstance(caught.value, PipelineSpecError)


@pytest.mark.parametrize(
    ("text", "fmt"),
    [
        ("[" * 100_000 + "]" * 100_000, "yaml"),  # flow style, closed
        ("a: " + "[" * 100_000, "yaml"),  # unclosed: libyaml's own nesting error is ours
        ("a: " + "{b: " * 100_000, "yaml"),
        ("".join("  " * i + "- x:\n" for i in range(200)), "yaml"),  # block style
        ("[" * 100_000 + "]" * 100_000, "json"),
    ],
)
def test_deep_nesting_is_a_depth_error_not_a_recursion_error(text: str, fmt: str) -> None:
    with pytest.raises(SpecLimitError) as caught:
        load_document(text, source="doc", fmt=fmt)  # type: ignore[arg-type]
    assert caught.value.limit == "spec_max_depth"
    assert "nested more than 64 levels" in str(caught.value)
    assert "DSPEX_SPEC_MAX_DEPTH=64" in str(caught.value)


def test_an_alias_to_a_deep_node_counts_its_depth() -> None:
    deep = "[" * 40 + "]" * 40
    text = f"a: &a {deep}\nb: [[[[[[[[[[[[[[[[[[[[[[[[[[[[[*a]]]]]]]]]]]]]]]]]]]]]]]]]]]]]\n"
    with pytest.raises(SpecLimitError, match="nested more than 64"):
        load_document(text, source="doc")


def test_size_limit_and_settings_are_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSPEX_SPEC_MAX_BYTES", "100")
    with pytest.raises(SpecLimitError, match=r"is 200 bytes, more than 100 \(limit DSPEX_SPEC_MAX_BYTES=100"):
        load_document("#" * 200, source="doc")
    monkeypatch.setenv("DSPEX_SPEC_MAX_BYTES", "1000000")
    monkeypatch.setenv("DSPEX_SPEC_MAX_NODES", "1000000000")
    # A bigger node budget lets a smaller bomb through, still without building anything big.
    assert load_document(billion_laughs(5), source="doc")["l4"][0][0][0][0] == ["lol"] * 9


def test_ordinary_documents_load_with_anchors_and_brackets_in_strings() -> None:
    assert load_document("x: &a {b: 1}\ny: *a\n", source="doc") == {"x": {"b": 1}, "y": {"b": 1}}
    text = json.dumps({"note": "[" * 500 + "{" * 500, "n": [1, [2, [3]]]})
    assert load_document(text, source="doc", fmt="json")["n"] == [1, [2, [3]]]
    project = load_document((ROOT / "prefect.yaml").read_text(encoding="utf-8"), source="project")
    assert project["deployments"]
    assert load_document(SPEC, source="doc")["steps"][0]["module"] == "dspy.Predict"


def test_a_spec_arriving_as_json_from_the_api_is_bounded_too() -> None:
    from flows import PipelineSpec

    nested: list = []
    cursor = nested
    for _ in range(100):
        cursor.append([])
        cursor = cursor[0]
    raw = {"name": "qa", "steps": [{"module": "dspy.Predict", "signature": "q -> a", "demos": nested}]}
    with pytest.raises(ValidationError, match="DSPEX_SPEC_MAX_DEPTH"):
        PipelineSpec.model_validate(raw)
    shared = ["lol"] * 10
    for _ in range(8):  # 10**8 values when walked, a few hundred objects in memory
        shared = [shared] * 10
    with pytest.raises(SpecLimitError, match="DSPEX_SPEC_MAX_NODES"):
        check_bounds({"demos": shared}, source="pipeline spec", settings=get_settings())
    assert PipelineSpec.model_validate(
        {"name": "qa", "steps": [{"module": "dspy.Predict", "signature": "q -> a"}]}
    )


# Runs the command and prints its peak RSS: this wrapper's only child is the dspex process.
_MEASURED = (
    "import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
    "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)"
)


def _dspex(tmp_path: Path, *args: str) -> tuple[int, str, float, int]:
    """Run the dspex CLI; its exit code, output, seconds and peak RSS in MB."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DSPEX_", "PREFECT_"))}
    env.update(DSPEX_HOME=str(tmp_path / "home"), DSPEX_SHARED_SERVER="false", COLUMNS="200")
    start = time.monotonic()
    try:
        done = subprocess.run(  # noqa: S603  (our own venv's dspex)
            [sys.executable, "-c", _MEASURED, str(BIN / "dspex"), *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"dspex {args[0]} did not end in 180 s: {str(exc.stdout)[-2000:]}")
    seconds = time.monotonic() - start
    output, _, peak = done.stdout.rpartition("PEAK_RSS_KB ")
    return done.returncode, output + done.stderr, seconds, int(peak.strip()) // 1024


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "name", "limit"),
    [
        ("run", "bomb.yaml", "DSPEX_SPEC_MAX_NODES=100000"),
        ("estimate", "bomb.yaml", "DSPEX_SPEC_MAX_NODES=100000"),
        ("run", "brackets.yaml", "DSPEX_SPEC_MAX_DEPTH=64"),  # was an untyped RecursionError
    ],
)
def test_dspex_cli_refuses_a_hostile_spec_at_once(
    tmp_path: Path, command: str, name: str, limit: str
) -> None:
    spec = tmp_path / name
    spec.write_text(bomb_spec() if name == "bomb.yaml" else "[" * 100_000 + "]" * 100_000, encoding="utf-8")
    data = tmp_path / "d.jsonl"
    data.write_text('{"question": "q?"}\n', encoding="utf-8")
    code, output, seconds, peak_mb = _dspex(tmp_path, command, str(spec), str(data))
    assert code == 2, output[-2000:]
    flat = " ".join(output.split())
    assert "SpecLimitError" in flat, flat
    assert limit in flat and str(spec) in flat, flat
    assert "Traceback" not in output and "RecursionError" not in output
    assert seconds < 60, f"took {seconds:.1f} s"
    # Memory stays at what the imports cost (the old loader went past 10 GB on the bomb).
    assert peak_mb < 1500, f"peak RSS {peak_mb} MB"
