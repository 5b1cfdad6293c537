"""Nothing lost: reserved row fields on the way in, the output always stored, partial output on failure.

A pipeline row carries two fields of the engine's own: ``_row`` (its position, or a caller's integer
row number such as `flows.batch_predict`'s dataset-wide one) and ``_error`` (why it failed). Rows fed
back from an earlier output, or a dataset with an ``_error``/``_row`` column, must neither crash the run
after every LM call was paid for nor be reported failed again without being tried, so
`prepare_input_rows` moves such values to ``_input_error`` / ``_input_row`` (kept, not lost) before the
engine sees them.

The output is always a stored payload (`store_output`): a small one is never kept only inside its
ref, which nobody can open. When a run fails midway, `keep_partial` stores the rows as they stand and
names the file in the error before it propagates.
"""

from __future__ import annotations

import logging
from typing import Any

from dspex.exceptions import PayloadError, PayloadFormatError
from dspex.redact import redact
from tasks.payloads import PayloadRef, write_payload
from tasks.rows import ERROR_FIELD

__all__ = [
    "INPUT_ERROR_FIELD",
    "INPUT_ROW_FIELD",
    "keep_partial",
    "prepare_input_rows",
    "row_number",
    "store_output",
]

ROW_FIELD = "_row"
#: Where an input row's own ``_error`` goes (an earlier run's error, or a user column).
INPUT_ERROR_FIELD = "_input_error"
#: Where an input row's ``_row`` goes when it is not an integer row number.
INPUT_ROW_FIELD = "_input_row"

logger = logging.getLogger(__name__)


def _is_row_number(value: Any) -> bool:
    return type(value) is int and value >= 0


def prepare_input_rows(rows: list[dict[str, Any]]) -> int:
    """Make the reserved fields the engine's own, in place; returns how many rows were changed.

    ``_error`` on input (an earlier run's error, a null column) is moved to ``_input_error`` (nulls
    are dropped), so the row runs again. A ``_row`` that is not a non-negative integer (an id, a
    string) is moved to ``_input_row``; every row then has an integer ``_row``, its position unless
    the caller numbered it.

    Args:
        rows: The input rows (dicts, modified in place).
    """
    changed = 0
    for i, row in enumerate(rows):
        touched = False
        if ERROR_FIELD in row:
            old = row.pop(ERROR_FIELD)
            if old is not None:
                row[INPUT_ERROR_FIELD] = old
            touched = True
        if ROW_FIELD in row and not _is_row_number(row[ROW_FIELD]):
            old = row.pop(ROW_FIELD)
            if old is not None:
                row[INPUT_ROW_FIELD] = old
            touched = True
        row.setdefault(ROW_FIELD, i)
        changed += touched
    if changed:
        logger.warning(
            "%d input row(s) carried reserved fields (_error, or a _row that is not a row number); "
            "kept as %s / %s, and the rows run again",
            changed,
            INPUT_ERROR_FIELD,
            INPUT_ROW_FIELD,
        )
    return changed


def row_number(row: dict[str, Any], position: int) -> int:
    """The row number to report for ``row``: its integer ``_row``, else its position."""
    value = row.get(ROW_FIELD)
    return value if isinstance(value, int) and _is_row_number(value) else position


def store_output(rows: list[dict[str, Any]]) -> PayloadRef:
    """Store the output rows as a payload file (never inline-only), whatever their size.

    A value MessagePack cannot hold (an object a user program returned) is stored as its text rather
    than losing the whole output.

    Raises:
        PayloadError: The payload store cannot be written (names it).
    """
    try:
        return write_payload(rows, inline_max_bytes=0)
    except PayloadFormatError as exc:
        from tasks.rows import to_jsonable

        logger.warning("output holds values payloads cannot store (%s); storing them as text", exc)
        return write_payload([to_jsonable(row) for row in rows], inline_max_bytes=0)


def keep_partial(rows: list[dict[str, Any]], error: BaseException) -> PayloadRef | None:
    """Store the rows as they stand when a run fails, and name the file in ``error``'s message.

    Never raises: if the rows cannot be stored either, the original error still propagates (with a
    note saying why nothing was kept).

    Args:
        rows: The run's rows, completed steps' outputs included.
        error: The error about to propagate (modified in place).

    Returns:
        The partial output's ref, or None when it could not be written.
    """
    try:
        ref = store_output(rows)
    except (PayloadError, OSError) as exc:
        error.add_note(f"the partial output could not be stored: {exc}")
        return None
    done = sum(ERROR_FIELD not in row for row in rows)
    note = f"partial output ({len(rows)} rows, {done} without an error) kept in {ref.uri}"
    logger.error("run failed: %s", note)
    setattr(error, "partial_output", ref)  # noqa: B010 - any exception type, typed readers use getattr
    # The message becomes the flow run's state message, stored by Prefect: mask secrets in it too
    # (a provider's error may quote a URL with credentials; DSPex's own errors already are masked).
    if isinstance(error, OSError) and error.strerror:
        error.strerror = f"{redact(error.strerror)}; {note}"
    elif len(error.args) == 1 and isinstance(error.args[0], str):
        error.args = (f"{redact(error.args[0])}; {note}",)
    else:
        error.add_note(note)
    return ref
