"""Where payload bytes live: any fsspec URL, a local folder by default.

Writes are atomic, so a crash never leaves a half-written file under a payload's final name:
- local folders: write ``<name>.tmp-<random>`` beside the target, then ``os.replace`` it (atomic on
  POSIX); the temporary file is removed when the write fails;
- every other filesystem (``memory://``, ``s3://``, ``gs://``, ...): one ``pipe_file`` call, a single
  PUT that object stores and fsspec's memory store publish whole or not at all (they have no rename,
  and a copy-then-delete "rename" would not be atomic anyway).

Large uncompressed Arrow payloads bound for a local folder are *streamed*: Arrow writes the array
buffers straight into the temporary file through a hashing wrapper (`stream_to_local`), so the bytes
are never assembled in memory first; the file is then renamed to its final (checksum or caller-given)
name (`commit`).

Local files are owner-only: folders DSPex creates are 0700 and files 0600, whatever the umask.

Local reads memory-map the file (zero-copy: an Arrow payload's arrays point into the page cache). Files
are only ever replaced by rename, never rewritten in place, so a mapping always sees a complete file.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow as pa
import xxhash
from fsspec.implementations.local import LocalFileSystem

from dspex import private
from dspex.exceptions import PayloadError, PayloadNotFoundError
from tasks.payloads import confine

__all__ = [
    "StreamedFile",
    "commit",
    "create_exclusive",
    "discard",
    "exists",
    "is_local",
    "join",
    "make_private_dirs",
    "read_bytes",
    "stream_to_local",
    "write_atomic",
]


def _resolve(uri: str) -> tuple[Any, str]:
    try:
        fs, path = fsspec.core.url_to_fs(uri)
    except (ValueError, ImportError) as exc:  # unknown protocol, or its fsspec backend is not installed
        raise PayloadError(f"cannot open payload storage: {exc}", uri=uri) from exc
    return fs, path


def join(base_url: str, name: str) -> str:
    """``base_url`` and a file name joined with one slash (works for local paths and URLs)."""
    return f"{base_url.rstrip('/')}/{name.lstrip('/')}"


def write_atomic(uri: str, data: Any) -> None:
    """Write ``data`` (bytes-like) to ``uri`` so readers see the whole file or none of it.

    Args:
        uri: Local path or fsspec URL of the final file.
        data: The bytes; any object with the buffer protocol (bytes, memoryview, pa.Buffer).

    Raises:
        PayloadError: The storage cannot be written (names the uri).
    """
    fs, path = _resolve(uri)
    view = memoryview(data)
    try:
        if isinstance(fs, LocalFileSystem):
            _write_local(path, view)
        else:
            # fsspec's memory store copies a buffer itself; other backends are only promised bytes.
            fs.pipe_file(path, view if _is_memory(fs) else bytes(view))
    except OSError as exc:
        raise PayloadError(f"cannot write payload: {exc}", uri=uri) from exc
    confine.remember_written(uri)  # what this process wrote, it may read back in a fenced run


def create_exclusive(uri: str, data: Any) -> bool:
    """Create the file at ``uri`` with ``data`` unless it exists; whole or not at all.

    Local folders: the bytes go to a temporary file that is then hard-linked to the final name,
    which fails if the name exists (atomic on POSIX), so of two racing writers exactly one wins.
    Other filesystems have no such primitive in fsspec: the file is written when absent (a check,
    then one PUT), the best an object store offers.

    Returns:
        True when this call created the file, False when it already existed.

    Raises:
        PayloadError: The storage cannot be written (names the uri).
    """
    fs, path = _resolve(uri)
    view = memoryview(data)
    try:
        if not isinstance(fs, LocalFileSystem):
            if fs.exists(path):
                return False
            fs.pipe_file(path, view if _is_memory(fs) else bytes(view))
            confine.remember_written(uri)
            return True
        make_private_dirs(os.path.dirname(path) or ".")
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        try:
            with _open_private(tmp) as handle:
                handle.write(view)
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
        confine.remember_written(uri)
        return True
    except OSError as exc:
        raise PayloadError(f"cannot write payload: {exc}", uri=uri) from exc


def is_local(url: str) -> bool:
    """Whether ``url`` is on the local filesystem (a plain path or ``file://``)."""
    return isinstance(_resolve(url)[0], LocalFileSystem)


@dataclass(frozen=True)
class StreamedFile:
    """A temporary file written by `stream_to_local`, with the checksum and size of its bytes."""

    tmp_path: str
    checksum: str
    nbytes: int


class _HashingWriter:
    """A write-only file that hashes (xxh3-128) and counts what passes through it to ``target``."""

    def __init__(self, target: Any) -> None:
        self._target = target
        self._hash = xxhash.xxh3_128()
        self.nbytes = 0
        self.closed = False

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self._hash.update(view)
        self.nbytes += view.nbytes
        return int(self._target.write(view))

    def tell(self) -> int:
        return self.nbytes

    def flush(self) -> None:
        self._target.flush()

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True  # the real file is closed by its owner

    def hexdigest(self) -> str:
        return str(self._hash.hexdigest())


def stream_to_local(directory: str, produce: Callable[[Any], None]) -> StreamedFile:
    """Let ``produce`` write into a temporary file in local ``directory``, hashing on the way.

    Nothing is copied in memory on the way to the file: this is how large Arrow payloads are stored
    locally. The caller then publishes the file with `commit` (or drops it with `discard`).

    Args:
        directory: Local folder (path or ``file://`` URL) that will hold the final file.
        produce: Called with a writable Python file object (also accepted by pyarrow as a sink).

    Raises:
        PayloadError: The folder cannot be written.
    """
    _, path = _resolve(join(directory, "x"))
    folder = os.path.dirname(path)
    tmp = os.path.join(folder, f".tmp-{uuid.uuid4().hex}")
    try:
        make_private_dirs(folder)
        with _open_private(tmp) as handle:
            writer = _HashingWriter(handle)
            produce(pa.PythonFile(writer, mode="w"))
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        if isinstance(exc, OSError):
            raise PayloadError(f"cannot write payload: {exc}", uri=directory) from exc
        raise
    return StreamedFile(tmp, f"xxh3_128:{writer.hexdigest()}", writer.nbytes)


def commit(streamed: StreamedFile, uri: str) -> None:
    """Publish a `stream_to_local` file under its final local ``uri`` (atomic rename)."""
    _, path = _resolve(uri)
    try:
        make_private_dirs(os.path.dirname(path) or ".")
        os.replace(streamed.tmp_path, path)
    except OSError as exc:
        discard(streamed)
        raise PayloadError(f"cannot write payload: {exc}", uri=uri) from exc
    confine.remember_written(uri)


def discard(streamed: StreamedFile) -> None:
    """Remove a `stream_to_local` file that will not be published."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(streamed.tmp_path)


def make_private_dirs(folder: str) -> None:
    """Create ``folder`` (and missing parents) readable by the owner only (0700).

    Folders that already exist keep their mode: a user's own output folder is theirs to set
    (`dspex.private.make_private_dirs`, the one helper for this).
    """
    private.make_private_dirs(folder)


def _open_private(path: str) -> Any:
    # Owner-only from the first byte (0600), whatever the umask: payloads hold users' data.
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")


def _is_memory(fs: Any) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "memory" in protocols


def _write_local(path: str, view: memoryview) -> None:
    directory = os.path.dirname(path) or "."
    make_private_dirs(directory)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        with _open_private(tmp) as handle:
            handle.write(view)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def read_bytes(uri: str) -> Any:
    """The bytes at ``uri``: a zero-copy memory map for local files, bytes otherwise.

    Raises:
        PayloadNotFoundError: Nothing is stored at ``uri``.
        PayloadError: The storage cannot be read.
    """
    fs, path = _resolve(uri)
    try:
        if isinstance(fs, LocalFileSystem):
            if os.path.isdir(path):
                raise IsADirectoryError(path)
            if os.path.getsize(path) == 0:  # an empty file cannot be mapped
                return b""
            with pa.memory_map(path, "r") as mapped:
                # The buffer keeps the mapping alive after the file object is closed.
                return mapped.read_buffer()
        with fs.open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError as exc:
        unreachable = _connection_error(exc)
        if unreachable is not None:  # fsspec's HTTP filesystem reports a refused connection as "not found"
            raise PayloadError(f"cannot reach the server: {unreachable}", uri=uri) from exc
        raise PayloadNotFoundError("no payload stored here", uri=uri) from exc
    except IsADirectoryError as exc:
        raise PayloadNotFoundError("this is a folder, not a payload", uri=uri) from exc
    except OSError as exc:
        raise PayloadError(f"cannot read payload: {exc}", uri=uri) from exc


def _connection_error(error: BaseException) -> BaseException | None:
    """The connection failure (refused, unreachable, DNS, timeout) behind ``error``, if any."""
    seen: set[int] = set()
    current: BaseException | None = error.__cause__ or error.__context__
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionError | TimeoutError) or type(current).__name__.startswith(
            ("ClientConnector", "ServerTimeout", "ServerDisconnected")
        ):
            return current
        current = current.__cause__ or current.__context__
    return None


def exists(uri: str) -> bool:
    """Whether a file is stored at ``uri``."""
    fs, path = _resolve(uri)
    try:
        return bool(fs.isfile(path))
    except OSError as exc:
        raise PayloadError(f"cannot check payload: {exc}", uri=uri) from exc
