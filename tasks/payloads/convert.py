"""Conversions between the Python types payloads accept and what the codecs store.

- numpy arrays <-> Arrow: 1-D arrays become one primitive column ``values``; N-D arrays a
  ``FixedSizeList`` column of the flattened trailing dimensions (one list per row: the layout other
  Arrow tools expect for embeddings). Both wrap the array's memory without copying, and reading back
  gives a numpy view of the Arrow buffer (zero-copy, read-only).
- ``dspy.Example`` / ``dspy.Prediction`` <-> row dicts plus their input keys.

dspy is imported only when DSPy objects are actually decoded, so payloads stay light to import.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from math import prod
from typing import Any

import numpy as np
import pyarrow as pa

from dspex.exceptions import PayloadCorruptError, PayloadFormatError

__all__ = [
    "ARROW_NDARRAY_KINDS",
    "MSGPACK_NDARRAY_KINDS",
    "dspy_list_kind",
    "examples_to_rows",
    "ndarray_from_table",
    "ndarray_to_table",
    "predictions_to_rows",
    "rows_to_examples",
    "rows_to_predictions",
]

#: numpy dtype kinds Arrow stores natively (bool, signed, unsigned, float).
ARROW_NDARRAY_KINDS = frozenset("biuf")
#: numpy dtype kinds the MessagePack codec stores as raw buffers (adds complex and date/time).
MSGPACK_NDARRAY_KINDS = frozenset("biufcmM")


def ndarray_to_table(array: np.ndarray) -> tuple[pa.Table, dict[str, Any]]:
    """An Arrow table wrapping ``array`` (no copy when it is C-contiguous) and the metadata to undo it.

    Raises:
        PayloadFormatError: A dtype Arrow cannot hold (object, strings, complex, datetimes).
    """
    if array.dtype.kind not in ARROW_NDARRAY_KINDS:
        raise PayloadFormatError(
            f"numpy dtype {array.dtype} cannot be stored as Arrow; supported kinds are bool, int, uint "
            "and float (use format='msgpack' for complex or datetime arrays)"
        )
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    array = np.ascontiguousarray(array)
    shape = list(array.shape)
    flat = pa.array(array.reshape(-1))
    width = prod(shape[1:]) if len(shape) >= 2 else 0
    column = pa.FixedSizeListArray.from_arrays(flat, width) if width > 0 else flat
    meta = {"shape": shape, "dtype": array.dtype.str}
    return pa.table({"values": column}), meta


def ndarray_from_table(table: pa.Table, meta: dict[str, Any], *, uri: str) -> np.ndarray:
    """The numpy array stored by `ndarray_to_table`: a zero-copy view when the buffer allows it.

    Raises:
        PayloadCorruptError: The table or metadata does not describe an array.
    """
    try:
        shape = tuple(int(n) for n in meta["shape"])
        dtype = np.dtype(str(meta["dtype"]))
        if dtype.kind not in ARROW_NDARRAY_KINDS or any(n < 0 for n in shape):
            raise ValueError(f"bad dtype or shape {dtype}, {shape}")
        if table.num_columns != 1:
            raise ValueError(f"expected one column, found {table.num_columns}")
        column = table.column(0)
        if column.num_chunks == 0:
            return np.empty(shape, dtype=dtype)
        chunk = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
        if pa.types.is_fixed_size_list(chunk.type):
            chunk = chunk.flatten()
        if chunk.null_count:
            raise ValueError("an ndarray payload holds nulls")
        flat = chunk.to_numpy(zero_copy_only=dtype.kind != "b")
        if flat.dtype != dtype or flat.size != prod(shape):
            raise ValueError(f"holds {flat.size} {flat.dtype} values, metadata says {shape} {dtype}")
        return flat.reshape(shape)
    except (KeyError, TypeError, ValueError, pa.ArrowException) as exc:
        raise PayloadCorruptError(f"not a valid ndarray payload: {exc}", uri=uri) from exc


def dspy_list_kind(items: Sequence[Any]) -> str | None:
    """``"predictions"`` / ``"examples"`` when every item is one, else None (dspy never imported here)."""
    dspy = sys.modules.get("dspy")
    if dspy is None or not items:
        return None
    if all(isinstance(item, dspy.Prediction) for item in items):
        return "predictions"
    if all(isinstance(item, dspy.Example) and not isinstance(item, dspy.Prediction) for item in items):
        return "examples"
    return None


def examples_to_rows(examples: Sequence[Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Row dicts of ``dspy.Example`` objects and metadata holding their input keys.

    When all examples share the same input keys they are stored once; otherwise per row.
    """
    rows = [example.toDict() for example in examples]
    keys = [sorted(example._input_keys or ()) for example in examples]
    if all(k == keys[0] for k in keys):
        return rows, {"input_keys": keys[0] if keys else []}
    return rows, {"input_keys_per_row": keys}


def rows_to_examples(rows: list[Any], meta: dict[str, Any], *, uri: str) -> list[Any]:
    """``dspy.Example`` objects back from `examples_to_rows` output."""
    import dspy

    per_row = meta.get("input_keys_per_row")
    shared = meta.get("input_keys", [])
    if per_row is not None and len(per_row) != len(rows):
        raise PayloadCorruptError(f"{len(per_row)} input-key lists for {len(rows)} examples", uri=uri)
    examples = []
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise PayloadCorruptError(f"example {index} is a {type(row).__name__}, not a mapping", uri=uri)
        keys = per_row[index] if per_row is not None else shared
        example = dspy.Example(**row)
        examples.append(example.with_inputs(*keys) if keys else example)
    return examples


def predictions_to_rows(predictions: Sequence[Any]) -> list[dict[str, Any]]:
    """Row dicts of ``dspy.Prediction`` objects (their fields; completions and LM usage are not kept)."""
    return [prediction.toDict() for prediction in predictions]


def rows_to_predictions(rows: list[Any], *, uri: str) -> list[Any]:
    """``dspy.Prediction`` objects back from `predictions_to_rows` output."""
    import dspy

    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise PayloadCorruptError(f"prediction {index} is a {type(row).__name__}, not a mapping", uri=uri)
    return [dspy.Prediction(**row) for row in rows]
