"""Storage: atomic writes (temp + rename locally, one put elsewhere), streamed writes, typed errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dspex.exceptions import PayloadError, PayloadNotFoundError
from tasks.payloads import storage


def test_local_write_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    uri = str(tmp_path / "deep" / "er" / "x.bin")
    storage.write_atomic(uri, b"first")
    storage.write_atomic(uri, memoryview(b"second"))
    assert bytes(storage.read_bytes(uri)) == b"second"
    assert [p.name for p in (tmp_path / "deep" / "er").iterdir()] == ["x.bin"]


def test_a_failing_local_write_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = str(tmp_path / "x.bin")
    storage.write_atomic(uri, b"old and complete")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(storage.os, "replace", broken_replace)
    with pytest.raises(PayloadError, match="disk full") as info:
        storage.write_atomic(uri, b"new")
    assert info.value.uri == uri
    assert Path(uri).read_bytes() == b"old and complete"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_streamed_write_hashes_what_it_writes(tmp_path: Path) -> None:
    from tasks.payloads.integrity import checksum

    def produce(sink: Any) -> None:
        sink.write(b"hello ")
        sink.write(memoryview(b"world"))

    streamed = storage.stream_to_local(str(tmp_path), produce)
    assert streamed.nbytes == 11 and streamed.checksum == checksum(b"hello world")
    storage.commit(streamed, str(tmp_path / "final.bin"))
    assert (tmp_path / "final.bin").read_bytes() == b"hello world"
    assert [p.name for p in tmp_path.iterdir()] == ["final.bin"]


def test_streamed_write_that_fails_removes_its_temp_file(tmp_path: Path) -> None:
    def produce(sink: Any) -> None:
        sink.write(b"half")
        raise RuntimeError("producer died")

    with pytest.raises(RuntimeError, match="producer died"):
        storage.stream_to_local(str(tmp_path), produce)
    assert list(tmp_path.iterdir()) == []


def test_memory_urls(memory_url: str) -> None:
    uri = storage.join(memory_url, "a/b.bin")
    assert not storage.exists(uri)
    storage.write_atomic(uri, b"data")
    assert storage.exists(uri) and bytes(storage.read_bytes(uri)) == b"data"
    assert not storage.is_local(memory_url)


def test_missing_and_folder_uris_are_not_found(tmp_path: Path, memory_url: str) -> None:
    for uri in (str(tmp_path / "nope"), storage.join(memory_url, "nope")):
        with pytest.raises(PayloadNotFoundError) as info:
            storage.read_bytes(uri)
        assert info.value.uri == uri
    with pytest.raises(PayloadNotFoundError, match="folder"):
        storage.read_bytes(str(tmp_path))


def test_empty_local_file_reads_as_empty_bytes(tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    assert storage.read_bytes(str(tmp_path / "empty")) == b""


def test_unknown_protocol_is_a_payload_error() -> None:
    with pytest.raises(PayloadError, match="cannot open payload storage"):
        storage.exists("nosuchproto://bucket/x")
