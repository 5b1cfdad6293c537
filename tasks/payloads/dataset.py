"""`Dataset`: a table of examples over one ``pa.Table``, batched without copying.

It converts from and to row dicts, pandas, JSONL, CSV and Parquet files (local paths or any fsspec
URL), and to ``dspy.Example`` objects with their input keys set. ``batches(size)`` yields zero-copy
slices, so a 100k-row dataset streams through a pipeline in batches without ever being duplicated.

Bad files raise typed errors that name the file (and the line, for JSONL and CSV):
`PayloadNotFoundError` for a missing file, `PayloadCorruptError` for a malformed line or file,
`PayloadFormatError` for content that is not a table (a JSONL line that is not an object, columns
whose values change type).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from dspex.exceptions import PayloadCorruptError, PayloadError, PayloadFormatError
from tasks.payloads import encoded, storage
from tasks.payloads.confine import check_data_read
from tasks.payloads.ref import PayloadFormat, PayloadRef

__all__ = ["Dataset"]


def _read_file(path: str) -> Any:
    check_data_read(str(path), "dataset")  # DSPEX_DATA_ROOTS: no arbitrary file or URL is read
    return storage.read_bytes(str(path))


def _table_from_pylist(
    rows: list[dict[str, Any]], *, source: str, lines: list[int] | None = None
) -> pa.Table:
    # Every row's keys, not the first row's: pa.Table.from_pylist takes its columns from the first
    # row, so {"query": ...} after {"question": ...} silently lost its field (issue 25).
    columns = list(dict.fromkeys(key for row in rows for key in row))
    try:
        return pa.Table.from_pydict({key: [row.get(key) for row in rows] for key in columns})
    except (pa.ArrowException, TypeError, ValueError) as exc:
        change = _type_change(rows)
        if change is None:
            raise PayloadFormatError(f"rows do not form a table: {exc}", uri=source) from exc
        column, index, before, now = change
        where = f"line {lines[index]}" if lines is not None else f"row {index}"
        raise PayloadFormatError(
            f"{where}: column {column!r} changes type: {now} here, {before} in earlier rows "
            "(every value of a column must have one type; quote numbers as strings, or use one type)",
            uri=source,
        ) from exc


def _kind(value: Any) -> str:
    # The families Arrow cannot mix in one column (ints and floats do mix: both become numbers).
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list | tuple):
        return "list"
    return type(value).__name__


def _type_change(rows: list[dict[str, Any]]) -> tuple[str, int, str, str] | None:
    """The first (column, row index, earlier type, new type) where a column's values change type."""
    seen: dict[str, str] = {}
    for index, row in enumerate(rows):
        for column, value in row.items():
            if value is None:
                continue
            kind = _kind(value)
            first = seen.setdefault(column, kind)
            if first != kind:
                return column, index, first, kind
    return None


class Dataset:
    """Rows of data held as one Arrow table.

    Args:
        table: The table; it is used as is (not copied).

    Attributes:
        table: The underlying ``pa.Table``.
    """

    __slots__ = ("table",)

    def __init__(self, table: pa.Table) -> None:
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        if not isinstance(table, pa.Table):
            raise PayloadFormatError(f"a Dataset wraps a pyarrow Table, not a {type(table).__name__}")
        self.table = table

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_rows(cls, rows: Sequence[dict[str, Any]]) -> Dataset:
        """A dataset of row dicts (all rows share the columns; missing values become nulls)."""
        return cls(_table_from_pylist(list(rows), source="<rows>"))

    @classmethod
    def from_pandas(cls, frame: pd.DataFrame, *, preserve_index: bool = False) -> Dataset:
        """A dataset of a DataFrame's columns (its index only when ``preserve_index``)."""
        try:
            return cls(pa.Table.from_pandas(frame, preserve_index=preserve_index))
        except (pa.ArrowException, TypeError, ValueError) as exc:
            raise PayloadFormatError(f"DataFrame does not convert to Arrow: {exc}") from exc

    @classmethod
    def from_examples(cls, examples: Sequence[Any]) -> Dataset:
        """A dataset of ``dspy.Example`` fields (input keys are not kept: use `to_examples`)."""
        return cls.from_rows([example.toDict() for example in examples])

    @classmethod
    def from_jsonl(cls, path: str) -> Dataset:
        """Read a JSON Lines file: one JSON object per line; blank lines are skipped.

        Raises:
            PayloadNotFoundError: No such file.
            PayloadCorruptError: A line that is not valid JSON (names the line; e.g. a truncated file).
            PayloadFormatError: A line that is not an object, or values that change type in a column.
        """
        data = _read_file(path)
        try:
            text = memoryview(data).tobytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _not_utf8(memoryview(data).tobytes(), exc, str(path)) from exc
        rows: list[dict[str, Any]] = []
        lines: list[int] = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PayloadCorruptError(
                    f"line {number}: invalid JSON ({exc.msg} at column {exc.colno})", uri=str(path)
                ) from exc
            except RecursionError:  # a hostile row of nested brackets: a typed error, not a crash
                raise PayloadFormatError(
                    f"line {number}: JSON nested too deeply to be a row", uri=str(path)
                ) from None
            if not isinstance(row, dict):
                raise PayloadFormatError(
                    f"line {number}: expected a JSON object, found {type(row).__name__}", uri=str(path)
                )
            rows.append(row)
            lines.append(number)
        return cls(_table_from_pylist(rows, source=str(path), lines=lines))

    @classmethod
    def from_csv(cls, path: str, **read_options: Any) -> Dataset:
        """Read a CSV file with a header row (pyarrow's fast reader; types are inferred).

        Args:
            path: Local path or fsspec URL.
            **read_options: Passed to ``pyarrow.csv.ConvertOptions`` (e.g. ``column_types``).

        Raises:
            PayloadNotFoundError: No such file.
            PayloadCorruptError: A malformed row, or bytes that are not UTF-8 text (names the line).
        """
        data = _read_file(path)
        buffer = data if isinstance(data, pa.Buffer) else pa.py_buffer(data)
        try:
            convert = pa_csv.ConvertOptions(**read_options) if read_options else None
            table = pa_csv.read_csv(pa.BufferReader(buffer), convert_options=convert)
        except (pa.ArrowException, ValueError) as exc:
            _check_utf8(buffer, str(path))
            line = _first_bad_csv_line(buffer)
            where = f"line {line}: " if line else ""
            raise PayloadCorruptError(f"{where}malformed CSV: {exc}", uri=str(path)) from exc
        # Arrow reads a column holding bytes that are not UTF-8 as binary, which became "b'...'"
        # strings downstream (issue 25): refuse as JSONL does, unless the caller asked for binary.
        asked = set((read_options.get("column_types") or {}).keys())
        if any(
            (pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)) and f.name not in asked
            for f in table.schema
        ):
            _check_utf8(buffer, str(path))
        return cls(table)

    @classmethod
    def from_parquet(cls, path: str) -> Dataset:
        """Read a Parquet file.

        Raises:
            PayloadNotFoundError: No such file.
            PayloadCorruptError: Not a (complete) Parquet file.
        """
        data = _read_file(path)
        buffer = data if isinstance(data, pa.Buffer) else pa.py_buffer(data)
        try:
            return cls(pq.read_table(pa.BufferReader(buffer)))
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise PayloadCorruptError(f"not a readable Parquet file: {exc}", uri=str(path)) from exc

    @classmethod
    def from_path(cls, path: str) -> Dataset:
        """Read a dataset file by its extension: ``.jsonl``, ``.csv``, ``.parquet`` (or ``.pq``).

        Raises:
            PayloadFormatError: An unknown extension.
            PayloadNotFoundError, PayloadCorruptError: As the reader for that type raises.
        """
        suffix = path.lower().rsplit(".", 1)[-1] if "." in path.rsplit("/", 1)[-1] else ""
        readers = {
            "jsonl": cls.from_jsonl,
            "csv": cls.from_csv,
            "parquet": cls.from_parquet,
            "pq": cls.from_parquet,
        }
        reader = readers.get(suffix)
        if reader is None:
            raise PayloadFormatError(
                f"unknown dataset file type {suffix!r}; use .jsonl, .csv or .parquet", uri=path
            )
        return reader(path)

    @classmethod
    def from_ref(cls, ref: PayloadRef | dict[str, Any]) -> Dataset:
        """The dataset a payload holds: a stored Dataset, table, batch or DataFrame as is, anything
        else as the rows `tasks.payloads.read_rows` gives."""
        kind, raw, meta, uri = encoded.read_raw(ref)
        if kind in ("dataset", "table", "record_batch"):
            return cls(raw)
        if kind == "dataframe":
            return cls.from_pandas(raw.to_pandas())
        return cls.from_rows(encoded.rows_of_raw(kind, raw, meta, uri))

    # --- shape ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.table.num_rows

    def __repr__(self) -> str:
        return f"Dataset(rows={len(self)}, columns={self.columns})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Dataset) and self.table.equals(other.table)

    __hash__ = None  # type: ignore[assignment]  # mutable-looking container semantics, like a list

    @property
    def columns(self) -> list[str]:
        """The column names."""
        return list(self.table.column_names)

    @property
    def schema(self) -> pa.Schema:
        """The Arrow schema."""
        return self.table.schema

    def batches(self, size: int) -> Iterator[Dataset]:
        """Consecutive datasets of ``size`` rows (the last may be shorter); zero-copy slices.

        Raises:
            ValueError: ``size`` is not positive.
        """
        if size < 1:
            raise ValueError(f"batch size must be >= 1, got {size}")
        for start in range(0, len(self), size):
            yield Dataset(self.table.slice(start, size))

    # --- conversion ----------------------------------------------------------------------------
    def to_rows(self) -> list[dict[str, Any]]:
        """One dict per row."""
        return self.table.to_pylist()

    def to_pandas(self) -> pd.DataFrame:
        """A pandas DataFrame."""
        return self.table.to_pandas()

    def to_examples(self, input_keys: Sequence[str]) -> list[Any]:
        """``dspy.Example`` objects with ``input_keys`` marked as inputs.

        Raises:
            PayloadFormatError: An input key that is not a column.
        """
        import dspy

        missing = [key for key in input_keys if key not in self.table.column_names]
        if missing:
            raise PayloadFormatError(f"input keys {missing} are not columns of the dataset {self.columns}")
        return [dspy.Example(**row).with_inputs(*input_keys) for row in self.to_rows()]

    def to_jsonl(self, path: str) -> None:
        """Write one JSON object per line (UTF-8, atomically)."""
        lines = [json.dumps(row, ensure_ascii=False, default=str) for row in self.to_rows()]
        text = "\n".join(lines) + ("\n" if lines else "")
        storage.write_atomic(str(path), text.encode("utf-8"))

    def to_csv(self, path: str) -> None:
        """Write a CSV file with a header row (atomically).

        Raises:
            PayloadFormatError: A column CSV cannot hold (lists, structs).
        """
        sink = pa.BufferOutputStream()
        try:
            pa_csv.write_csv(self.table, sink)
        except (pa.ArrowException, ValueError) as exc:
            raise PayloadFormatError(f"cannot write as CSV (nested columns?): {exc}", uri=str(path)) from exc
        storage.write_atomic(str(path), sink.getvalue())

    def to_parquet(self, path: str, compression: str = "zstd") -> None:
        """Write a Parquet file (atomically)."""
        sink = pa.BufferOutputStream()
        try:
            pq.write_table(self.table, sink, compression=compression)
        except (pa.ArrowException, ValueError) as exc:
            raise PayloadError(f"cannot write as Parquet: {exc}", uri=str(path)) from exc
        storage.write_atomic(str(path), sink.getvalue())

    def write(
        self, base_url: str | None = None, format: PayloadFormat | None = None, *, name: str | None = None
    ) -> PayloadRef:
        """Store the dataset as an Arrow payload; `tasks.payloads.read_payload` gives back a Dataset."""
        return encoded.write_payload(self.table, base_url, format, name=name, kind="dataset")


def _not_utf8(data: bytes, error: UnicodeDecodeError, source: str) -> PayloadCorruptError:
    line = data.count(b"\n", 0, error.start) + 1
    return PayloadCorruptError(
        f"line {line}: not UTF-8 text (byte {error.start}); save the file as UTF-8", uri=source
    )


def _check_utf8(buffer: pa.Buffer, source: str) -> None:
    """Raise `PayloadCorruptError` naming the line of the first byte that is not UTF-8, if any."""
    data = buffer.to_pybytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _not_utf8(data, exc, source) from exc


def _first_bad_csv_line(buffer: pa.Buffer) -> int | None:
    """The 1-based line of the first record whose field count differs from the header's, if any."""
    try:
        text = buffer.to_pybytes().decode("utf-8", errors="replace")
        reader = csv.reader(io.StringIO(text, newline=""))
        header = next(reader, None)
        if header is None:
            return None
        for record in reader:
            if record and len(record) != len(header):
                return reader.line_num
    except csv.Error:
        return reader.line_num
    return None
