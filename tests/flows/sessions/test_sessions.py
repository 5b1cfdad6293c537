"""Sessions: history across turns and processes, serialized turns, TTL, close, bad input.

Turns run real DSPy modules: the bundled offline LM (deterministic, thread-safe) or DSPy's DummyLM.
The store is the embedded SQLite default under each test's own DSPEX_HOME.
"""

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dspy
import pytest
from dspy.utils.dummies import DummyLM
from support.openai_server import Fault, openai_server

from dspex.exceptions import (
    InputValidationError,
    PipelineSpecError,
    SessionExpiredError,
    SessionNotFoundError,
)
from flows.sessions.session import get_session, open_session
from flows.sessions.store import get_store

ROOT = Path(__file__).resolve().parents[3]
QA = {"module": "dspy.Predict", "signature": "question, context -> answer"}

_SECOND_PROCESS = """
import json, sys
import dspex.bootstrap
from dspy.utils.dummies import DummyLM
from flows.sessions.session import get_session

lm = DummyLM([{"answer": "the fourth answer"}])
session = get_session(sys.argv[1], lm=lm)
before = session.history
out = session.turn(question="And the fourth?", context="none")
prompt = json.dumps(lm.history[-1]["messages"])
print(json.dumps({"before": before, "out": out, "after": len(session.history),
                  "seen": [q in prompt for q in ("first question", "second question", "third question")]}))
"""

_CONCURRENT_PROCESS = """
import sys
import dspex.bootstrap
from flows.sessions.session import get_session

session = get_session(sys.argv[1])
for n in range(int(sys.argv[3])):
    session.turn(question=f"{sys.argv[2]}-{n}", context="Paris is in France.")
"""


def _python(script: str, *args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_three_turns_continue_in_a_second_process():
    lm = DummyLM([{"answer": f"answer {n}"} for n in range(3)])
    session = open_session(QA, ttl_seconds=600, lm=lm)
    for word in ("first", "second", "third"):
        session.turn(question=f"The {word} question?", context="some context")
    proc = _python(_SECOND_PROCESS, session.id, env=dict(os.environ))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert [t["question"] for t in result["before"]] == [
        f"The {w} question?" for w in ("first", "second", "third")
    ]
    assert [t["answer"] for t in result["before"]] == ["answer 0", "answer 1", "answer 2"]
    assert result["seen"] == [True, True, True]  # the program's prompt carried the history
    assert result["out"] == {"answer": "the fourth answer"}
    assert result["after"] == 4
    assert get_session(session.id).record.version == 4


def test_fifty_sessions_with_four_concurrent_turns_each_lose_nothing():
    sessions = [open_session(QA, ttl_seconds=600) for _ in range(50)]
    jobs = [(s, n) for n in range(4) for s in sessions]

    def turn(job):
        session, n = job
        return session.turn(question=f"{session.id} turn {n}?", context="Paris is in France.")

    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(turn, jobs))
    assert len(results) == 200 and all("answer" in r for r in results)
    for session in sessions:
        record = session.record
        assert record.version == 4
        assert sorted(t["question"] for t in record.history) == [f"{session.id} turn {n}?" for n in range(4)]


def test_turns_from_two_processes_on_one_session_are_serialized():
    session = open_session(QA, ttl_seconds=600)
    procs = [_python(_CONCURRENT_PROCESS, session.id, tag, "6", env=dict(os.environ)) for tag in ("a", "b")]
    for proc in procs:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
    history = session.history
    assert sorted(t["question"] for t in history) == sorted(f"{t}-{n}" for t in "ab" for n in range(6))
    assert session.record.version == 12


def test_expired_session_refuses_turns_and_cleanup_removes_only_expired():
    short = open_session(QA, ttl_seconds=0.5)
    long = open_session(QA, ttl_seconds=600)
    short.turn(question="Where is Paris?", context="Paris is in France.")
    time.sleep(0.7)
    with pytest.raises(SessionExpiredError, match="expired"):
        short.turn(question="Again?", context="x")
    with pytest.raises(SessionExpiredError):
        get_session(short.id)
    assert short.history[0]["question"] == "Where is Paris?"  # kept until cleanup
    removed = get_store().delete_expired()
    assert removed == [short.id]
    with pytest.raises(SessionNotFoundError):
        get_session(short.id)
    long.turn(question="Still here?", context="yes")
    assert len(long.history) == 1


def test_a_turn_extends_the_ttl():
    session = open_session(QA, ttl_seconds=1.0)
    for _ in range(3):
        time.sleep(0.5)
        session.turn(question="Where is Paris?", context="Paris is in France.")
    assert len(session.history) == 3


def test_closed_session_refuses_turns():
    session = open_session(QA)
    session.close()
    with pytest.raises(SessionExpiredError, match="closed"):
        session.turn(question="q?", context="c")
    assert get_store().delete_expired() == [session.id]


def test_missing_input_and_reserved_history_fail_before_any_lm_call():
    lm = DummyLM([{"answer": "never"}])
    session = open_session(QA, lm=lm)
    with pytest.raises(InputValidationError, match="context"):
        session.turn(question="q?")
    with pytest.raises(InputValidationError, match="history"):
        session.turn(question="q?", context="c", history=[])
    assert lm.history == [] and session.history == []


def test_a_failed_turn_keeps_the_history_and_frees_the_session():
    session = open_session(QA, lm=DummyLM([{"answer": "one"}]))
    session.turn(question="q1?", context="c")
    with openai_server(faults=[Fault.error(400, "bad request (injected)")]) as server:
        broken = dspy.LM(
            "openai/m", api_base=server.base_url, api_key="sk-secret", num_retries=0, cache=False
        )
        with pytest.raises(Exception, match="injected"):
            get_session(session.id, lm=broken).turn(question="q2?", context="c")
    assert [t["question"] for t in session.history] == ["q1?"]
    other = get_session(session.id, lm=DummyLM([{"answer": "three"}]))
    assert other.turn(question="q3?", context="c") == {"answer": "three"}  # not left locked
    stored = (Path(os.environ["DSPEX_HOME"]) / "sessions.db").read_bytes()
    assert b"sk-secret" not in stored


def test_unknown_session_and_bad_programs_are_typed_errors():
    with pytest.raises(SessionNotFoundError):
        get_session("no-such-session")
    with pytest.raises(PipelineSpecError):
        open_session({"module": "dspy.Predict", "signature": "question -> answer", "bogus": 1})
    with pytest.raises(PipelineSpecError):
        open_session(object())  # type: ignore[arg-type]


def test_a_live_module_travels_with_its_demos_as_json():
    program = dspy.ChainOfThought("question -> answer")
    program.predict.demos = [dspy.Example(question="2+2?", reasoning="add", answer="4")]
    lm = DummyLM([{"reasoning": "r", "answer": "Paris"}])
    session = open_session(program, lm=lm)
    record = session.record
    assert record.step["module"] == "dspy.ChainOfThought"
    assert record.state["predict"]["demos"][0]["answer"] == "4"
    assert session.turn(question="Capital of France?") == {"reasoning": "r", "answer": "Paris"}
    assert "2+2?" in json.dumps(lm.history[-1]["messages"])  # the demo reached the prompt
