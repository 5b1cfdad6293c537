"""Learned waits of provider batches, kept apart from the online duration estimates (issue 21).

Online latencies feed the registry's duration estimates per row (`registry.record_duration`); a
batch's wait is a different quantity (minutes to hours per *round*, whatever the row count), so it is
learned here instead, per module and model, in ``<DSPEX_HOME>/lm_batch_waits.json`` (the last 20
rounds' waits in seconds). `expected_batch_wait` is what ``dspex estimate`` shows as the expected
wait of a batch-mode step.
"""

from __future__ import annotations

import json
import logging
import statistics
import threading
from pathlib import Path

from dspex.settings import get_settings

__all__ = ["expected_batch_wait", "record_batch_wait"]

_KEEP = 20
_lock = threading.Lock()
logger = logging.getLogger("dspex.batch_estimates")


def _path() -> Path:
    return Path(get_settings().home) / "lm_batch_waits.json"


def _read(path: Path) -> dict[str, list[float]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:  # a learned figure is an optimization: start over
        logger.warning("ignoring unreadable %s: %s", path, exc)
        return {}
    return (
        {k: [float(x) for x in v] for k, v in data.items() if isinstance(v, list)}
        if isinstance(data, dict)
        else {}
    )


def record_batch_wait(module: str, model: str, seconds: float) -> None:
    """Learn one round's wait (submission to completion) of ``module`` on ``model``."""
    path = _path()
    with _lock:
        data = _read(path)
        key = f"{module}|{model}"
        data[key] = [*data.get(key, []), round(float(seconds), 3)][-_KEEP:]
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, sort_keys=True), encoding="utf-8")
            tmp.replace(path)
        except OSError as exc:
            logger.warning("could not keep the batch wait in %s: %s", path, exc)


def expected_batch_wait(module: str, model: str) -> float | None:
    """The median learned wait of one round in seconds, or None when no batch ran yet."""
    waits = _read(_path()).get(f"{module}|{model}")
    return statistics.median(waits) if waits else None
