"""Owner-only files and folders: what DSPex creates is 0700 (folders) or 0600 (files), whatever the umask.

``DSPEX_HOME`` holds session histories, payloads, the registry, stream spools and the Prefect
database: with the usual umask (022) every local user could read them (issue 25). Every place that
creates a folder or file there goes through these helpers (payload files through
`tasks.payloads.storage`, which uses the same modes).

Folders that already exist keep their mode (a user's own output folder is theirs to set), except the
default ``.dspex`` home, which an older DSPex created 0755: it is tightened when it belongs to this
user. Existing files DSPex manages (databases) are tightened the same way.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import IO, Any

__all__ = ["make_private_dirs", "open_private", "private_file", "private_home"]


def make_private_dirs(folder: str | os.PathLike[str]) -> Path:
    """Create ``folder`` and its missing parents owner-only (0700); existing ones are left as they are.

    Returns:
        The folder, absolute.
    """
    target = Path(os.path.abspath(folder))
    missing: list[Path] = []
    current = target
    while not current.is_dir():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
            os.chmod(path, 0o700)  # mkdir's mode is masked by the umask; say it exactly
    return target


def _tighten(path: Path, mode: int) -> None:
    with contextlib.suppress(OSError):
        info = path.stat()
        if info.st_uid == os.getuid() and info.st_mode & 0o777 & ~mode:
            os.chmod(path, mode)


def private_home(home: str | os.PathLike[str]) -> Path:
    """Create the DSPex home owner-only; tighten a default ``.dspex`` home an older DSPex made 0755.

    Returns:
        The home, absolute.
    """
    path = Path(os.path.abspath(home))
    existed = path.is_dir()
    make_private_dirs(path)
    if existed and path.name == ".dspex":
        _tighten(path, 0o700)
    return path


def private_file(path: str | os.PathLike[str]) -> Path:
    """Make sure ``path`` exists owner-only (0600): create it empty, or tighten it when it is ours.

    For files another program then opens itself (SQLite databases: their ``-wal`` and ``-shm``
    files copy the database's mode). The folder is created owner-only when missing.

    Returns:
        The file, absolute.
    """
    target = Path(os.path.abspath(path))
    make_private_dirs(target.parent)
    try:
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        _tighten(target, 0o600)
    return target


def open_private(path: str | os.PathLike[str], mode: str = "a", encoding: str = "utf-8") -> IO[Any]:
    """Open ``path`` for writing (``"a"`` append, ``"w"`` truncate, ``"x"`` new), created 0600.

    The folder is created owner-only when missing; an existing file keeps its mode.
    """
    flags = {"a": os.O_APPEND | os.O_CREAT, "w": os.O_TRUNC | os.O_CREAT, "x": os.O_CREAT | os.O_EXCL}
    if mode not in flags:
        raise ValueError(f"open_private opens for writing: mode 'a', 'w' or 'x', not {mode!r}")
    target = Path(os.path.abspath(path))
    make_private_dirs(target.parent)
    return os.fdopen(os.open(target, os.O_WRONLY | flags[mode], 0o600), mode, encoding=encoding)
