"""Item 9 of issue 13: reads are fenced. Payloads come only from the payload root (and the data
roots), datasets, corpora and saved states only from ``DSPEX_DATA_ROOTS`` (default: the project folder
and the payload root), and ``http://`` is never fetched unless a root names it.

The original failure: a `PayloadRef` whose ``uri`` was ``file:///etc/shadow`` or ``../../etc/passwd``
answered with the real size and checksum of the file (an existence/size/hash oracle); dataset, corpus
and ``state`` paths read any file the worker could reach; ``http://`` URLs became server-side GETs.

Since issue 20 the fence guards values that arrive through the Prefect API, so these tests read inside
`tasks.payloads.confine.fenced` (what ``run-step`` enters, and what a deployment run is); that a
deployment run really is fenced, and a local caller is not, is in ``test_security_read_fence.py``.
"""

from __future__ import annotations

import http.server
import json
import os
import threading
from pathlib import Path

import pytest

from dspex.exceptions import PayloadAccessError
from tasks.modules import read_program_state
from tasks.payloads import Dataset, PayloadRef, payload_exists, read_rows, write_payload
from tasks.payloads.confine import fenced
from tasks.payloads.integrity import checksum

SECRET_TEXT = b"root:$6$very-secret-hash:19000:0:99999:7:::\n"


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder as the current directory, the real default roots, a file outside, and every
    read of the test fenced (as in a run started through the Prefect API)."""
    root = tmp_path / "project"
    root.mkdir()
    monkeypatch.chdir(root)
    monkeypatch.delenv("DSPEX_DATA_ROOTS", raising=False)
    monkeypatch.setenv("DSPEX_HOME", str(root / ".dspex"))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    secret = outside / "shadow"
    secret.write_bytes(SECRET_TEXT)
    with fenced():  # set in the test's own context: the test body runs inside it
        yield root, secret


def _ref(uri: str) -> PayloadRef:
    # A forged ref: wrong size and checksum, so an oracle would answer with the real ones.
    return PayloadRef(
        uri=uri, format="msgpack", kind="rows", rows=1, nbytes=1, checksum="xxh3_128:" + "0" * 32
    )


def _leaks(message: str, data: bytes) -> bool:
    return str(len(data)) in message or checksum(data).split(":")[1] in message


@pytest.mark.parametrize("form", ["file", "absolute", "relative"])
def test_forged_payload_ref_outside_the_root_is_no_oracle(project, form):
    root, secret = project
    uri = {
        "file": f"file://{secret}",
        "absolute": str(secret),
        "relative": os.path.relpath(secret, root / ".dspex" / "payloads"),
    }[form]
    with pytest.raises(PayloadAccessError) as present:
        read_rows(_ref(uri))
    with pytest.raises(PayloadAccessError) as absent:
        read_rows(_ref(uri + "-missing"))
    assert not _leaks(str(present.value), SECRET_TEXT)
    # the same answer whether or not the file exists: no existence oracle either
    assert str(absent.value).replace("-missing", "") == str(present.value)
    with pytest.raises(PayloadAccessError):
        payload_exists(_ref(uri))


def test_symlink_in_the_payload_root_does_not_escape_it(project):
    root, secret = project
    payloads = root / ".dspex" / "payloads"
    payloads.mkdir(parents=True)
    (payloads / "innocent.msgpack").symlink_to(secret)
    with pytest.raises(PayloadAccessError):
        read_rows(_ref(str(payloads / "innocent.msgpack")))


def test_payloads_in_the_root_still_read(project):
    ref = write_payload([{"q": "x" * 100}] * 300)  # stored, not inline
    assert ref.is_stored and read_rows(ref)[0]["q"] == "x" * 100


def test_dataset_and_state_paths_are_confined_to_the_data_roots(project):
    root, secret = project
    outside = secret.with_name("rows.jsonl")
    outside.write_text('{"question": "q"}\n')
    inside = root / "rows.jsonl"
    inside.write_text('{"question": "q"}\n')
    with pytest.raises(PayloadAccessError, match="DSPEX_DATA_ROOTS"):
        Dataset.from_path(str(outside))
    with pytest.raises(PayloadAccessError):
        Dataset.from_path(f"{root}/../elsewhere/rows.jsonl")
    assert Dataset.from_path(str(inside)).to_rows() == [{"question": "q"}]
    assert Dataset.from_path("rows.jsonl").to_rows() == [{"question": "q"}]  # relative to the project
    state = secret.with_name("state.json")
    state.write_text(json.dumps({"demos": []}))
    with pytest.raises(PayloadAccessError):
        read_program_state(str(state))
    with pytest.raises(PayloadAccessError):
        read_program_state(str(secret))


def test_configured_roots_replace_the_default(project, monkeypatch):
    _root, secret = project
    data = secret.parent / "rows.jsonl"
    data.write_text('{"question": "q"}\n')
    monkeypatch.setenv("DSPEX_DATA_ROOTS", json.dumps([str(secret.parent)]))
    assert len(Dataset.from_path(str(data))) == 1


@pytest.fixture
def http_server():
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            hits.append(self.path)
            body = b'{"question": "from http"}\n'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_HEAD(self):  # noqa: N802
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "26")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", hits
    server.shutdown()
    server.server_close()


def test_http_urls_are_not_fetched_unless_a_root_allows_them(project, http_server, monkeypatch):
    base, hits = http_server
    with pytest.raises(PayloadAccessError, match="DSPEX_DATA_ROOTS"):
        Dataset.from_path(f"{base}/rows.jsonl")
    with pytest.raises(PayloadAccessError):
        read_rows(_ref(f"{base}/x.msgpack"))
    assert hits == []  # no request left this process
    monkeypatch.setenv("DSPEX_DATA_ROOTS", json.dumps([f"{base}/data/"]))
    with pytest.raises(PayloadAccessError):
        Dataset.from_path(f"{base}/data/../private/rows.jsonl")
    assert Dataset.from_path(f"{base}/data/rows.jsonl").to_rows() == [{"question": "from http"}]
    assert hits and all(h.startswith("/data/") for h in hits)


def test_refusal_message_names_the_location_and_how_to_allow_it(project):
    _root, secret = project
    with pytest.raises(PayloadAccessError) as caught:
        Dataset.from_path(str(Path(secret).with_suffix(".csv")))
    message = str(caught.value)
    assert "shadow.csv" in message and "DSPEX_DATA_ROOTS" in message
