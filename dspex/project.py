"""Which folder is the project: where the default ``.dspex`` home goes (issue 25).

Run from a subfolder, DSPex used to create a second ``.dspex`` there, with its own Prefect database,
resume store and registry, silently. Like git (which looks for ``.git`` in the folder and its
parents) and ``prefect deploy`` (which looks for ``prefect.yaml``), DSPex now walks up from the
current folder to the project root: the nearest folder with ``prefect.yaml``, ``pyproject.toml`` or
``.git``. Its home is then the nearest ``.dspex`` between the current folder and that root (one an
earlier run made in a subfolder keeps its data), else ``<root>/.dspex``. With no project root at all,
the current folder is used, as before: a ``.dspex`` in some parent outside a project (``/tmp``) is
never taken, and neither is one owned by another user.

``DSPEX_HOME`` set explicitly always wins. The CLI prints which folder it uses when it is not the
current one (`home_note`).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["HOME_NAME", "PROJECT_MARKERS", "find_project_root", "home_note"]

#: The default home's folder name.
HOME_NAME = ".dspex"
#: Files or folders that mark a project's root when no ``.dspex`` exists yet.
PROJECT_MARKERS = ("prefect.yaml", "pyproject.toml", ".git")


def _ours(folder: Path) -> bool:
    try:
        return folder.is_dir() and folder.stat().st_uid == os.getuid()
    except OSError:
        return False


def find_project_root(start: Path | None = None) -> tuple[Path, str]:
    """The folder whose ``.dspex`` is the default home for ``start`` (default: the current folder).

    Returns:
        The folder and a short reason (``"has .dspex"``, ``"project root: has prefect.yaml"``, ...,
        ``"current folder"``).
    """
    here = (start or Path.cwd()).resolve()
    passed: list[Path] = []
    for folder in (here, *here.parents):
        passed.append(folder)
        marker = next((m for m in PROJECT_MARKERS if (folder / m).exists()), None)
        if marker is not None:
            for candidate in passed:  # nearest first
                if _ours(candidate / HOME_NAME):
                    return candidate, f"has {HOME_NAME}"
            return folder, f"project root: has {marker}"
    return here, "current folder"


def home_note(home: Path, start: Path | None = None) -> str | None:
    """A line saying which DSPex home is used, when it is not in the current folder; else None."""
    here = (start or Path.cwd()).resolve()
    resolved = home.resolve()
    if resolved.parent == here:
        return None
    root, _why = find_project_root(here)
    marker = next((m for m in PROJECT_MARKERS if (root / m).exists()), HOME_NAME)
    reason = f"project folder {root}, which has {marker}" if resolved == (root / HOME_NAME) else "DSPEX_HOME"
    return f"DSPex home: {resolved} ({reason}; set DSPEX_HOME to choose another)"
