"""Issue 13 item 6: a batch result is written atomically as a unit, even when two dispatches of the
same ``batch_key`` race.

Original failure: both dispatches wrote the payload under the same name and then the sidecar; with
writes interleaved (payload A, payload B, sidecar B, sidecar A) the sidecar's checksum no longer
matched the file, and every later re-dispatch failed on the mismatch, forever.
"""

from __future__ import annotations

import threading
import time

import pytest

import flows.guards.resume
from flows.guards.resume import BatchStore, batch_key
from tasks.batch import BatchResult
from tasks.payloads import storage


def _result(answer: str, wall_ms: float) -> BatchResult:
    return BatchResult(outputs=[{"answer": answer}], errors=[None], latencies_ms=[wall_ms], wall_ms=wall_ms)


KEY = batch_key("0123456789abcdef0123456789abcdef", ["row-a"])


def test_interleaved_writes_of_one_batch_leave_a_readable_result(tmp_path, monkeypatch):
    store = BatchStore(str(tmp_path / "payloads"))
    both_written = threading.Barrier(2)
    real_write_payload = flows.guards.resume.write_payload

    def write_then_wait(*args, **kwargs):
        ref = real_write_payload(*args, **kwargs)
        both_written.wait(timeout=10)  # both payloads are written before either sidecar
        if threading.current_thread().name == "first":
            time.sleep(0.2)  # ...and the first dispatch publishes last
        return ref

    monkeypatch.setattr(flows.guards.resume, "write_payload", write_then_wait)
    returned: dict[str, object] = {}

    def dispatch(name: str, answer: str, wall_ms: float) -> None:
        returned[name] = store.write(KEY, _result(answer, wall_ms), ["row-a"])

    threads = [
        threading.Thread(target=dispatch, args=("first", "A", 11.0), name="first"),
        threading.Thread(target=dispatch, args=("second", "B", 22.0), name="second"),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    found = store.read(KEY)  # used to raise PayloadCorruptError (checksum mismatch), every time
    assert found is not None
    ref, result = found
    assert result.outputs[0]["answer"] == "B"  # the first result published stays
    assert returned["first"] == returned["second"] == ref  # both dispatches report that one
    assert store.completed(KEY.split("-")[0]) == {"row-a": {"answer": "B"}}


def test_a_broken_sidecar_from_an_older_race_is_replaced(tmp_path):
    store = BatchStore(str(tmp_path / "payloads"))
    store.write(KEY, _result("A", 1.0), ["row-a"])
    sidecar = store.ref_uri(KEY)
    broken = storage.read_bytes(sidecar).to_pybytes().replace(b"xxh3_128:", b"xxh3_128:0", 1)[:-1]
    storage.write_atomic(sidecar, broken)
    with pytest.raises(ValueError):
        store.read(KEY)
    store.write(KEY, _result("C", 2.0), ["row-a"])  # a re-dispatch heals it
    found = store.read(KEY)
    assert found is not None and found[1].outputs[0]["answer"] == "C"


def test_equal_results_share_one_file(tmp_path):
    store = BatchStore(str(tmp_path / "payloads"))
    first = store.write(KEY, _result("A", 1.0), ["row-a"])
    again = store.write(KEY, _result("A", 1.0), ["row-a"])
    assert first.uri == again.uri and first.checksum == again.checksum
