"""Reading user data files (CSV/TSV, JSONL, Parquet) into a Table that remembers where each row came from.

Errors name the file, the line or row, the column, what was expected and what was found.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop.errors import DataError

SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
            ".parquet": "parquet", ".pq": "parquet"}


@dataclass(frozen=True)
class Table:
    """Columns of one data file, and for each row where it is in the file ("line 7", "row 7")."""

    path: Path
    columns: dict[str, list[Any]]
    locations: list[str]

    @property
    def column_names(self) -> list[str]:
        return list(self.columns)

    def __len__(self) -> int:
        return len(self.locations)

    def where(self, index: int, column: str | None = None) -> str:
        """'data.csv, line 7, column 'text'' for row ``index`` (0-based) of this table."""
        place = f"{self.path}, {self.locations[index]}"
        return f"{place}, column '{column}'" if column is not None else place


def read_table(path: str | Path) -> Table:
    """Read a CSV/TSV, JSONL or Parquet file; raise DataError naming the problem and where it is."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file.")
    if path.is_dir():
        raise DataError(f"{path}: expected a data file, found a directory.")
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: expected a file ending in one of {', '.join(sorted(SUFFIXES))}; "
                        f"found '{path.suffix or '(no suffix)'}'.")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: could not be read ({exc.strerror or exc}).") from exc
    if not raw.strip():
        raise DataError(f"{path}: the file is empty.")
    if kind == "parquet":
        table = _read_parquet(path, raw)
    else:
        text = _decode(path, raw)
        table = _read_jsonl(path, text) if kind == "jsonl" else _read_delimited(path, text, kind)
    if len(table) == 0:
        raise DataError(f"{path}: the file has column names ({', '.join(table.columns)}) but no data rows.")
    return table


def _decode(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        bad = raw[exc.start:exc.start + 1].hex()
        raise DataError(f"{path}, line {line}: expected UTF-8 text, found byte 0x{bad} that is not valid UTF-8. "
                        "Re-save the file as UTF-8 (it may be Latin-1 or Windows-1252).") from exc


def _read_delimited(path: Path, text: str, kind: str) -> Table:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="," if kind == "csv" else "\t")
    header: list[str] | None = None
    rows: list[list[str]] = []
    locations: list[str] = []
    line_before = 0
    try:
        for record in reader:
            first_line, line_before = line_before + 1, reader.line_num
            if not record or all(not cell.strip() for cell in record):
                continue
            if header is None:
                header = [name.strip() for name in record]
                _check_header(path, header, f"line {first_line}")
                continue
            if len(record) != len(header):
                raise DataError(f"{path}, line {first_line}: expected {len(header)} fields as in the header, "
                                f"found {len(record)}. Quote fields that contain the delimiter.")
            rows.append(record)
            locations.append(f"line {first_line}")
    except csv.Error as exc:
        raise DataError(f"{path}, line {reader.line_num}: not valid {kind.upper()} ({exc}).") from exc
    if header is None:
        raise DataError(f"{path}: the file is empty.")
    columns = {name: [row[i] for row in rows] for i, name in enumerate(header)}
    return Table(path, columns, locations)


def _check_header(path: Path, header: list[str], where: str) -> None:
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise DataError(f"{path}, {where}: column name '{name}' appears twice in the header.")
        seen.add(name)


def _read_jsonl(path: Path, text: str) -> Table:
    records: list[dict[str, Any]] = []
    locations: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}, line {number}: expected one JSON object per line, "
                            f"found invalid JSON ({exc.msg} at column {exc.colno}).") from exc
        if not isinstance(record, dict):
            raise DataError(f"{path}, line {number}: expected a JSON object, found {type(record).__name__}.")
        records.append(record)
        locations.append(f"line {number}")
    names: dict[str, None] = {}
    for record in records:
        names.update(dict.fromkeys(record))
    columns = {name: [record.get(name) for record in records] for name in names}
    return Table(path, columns, locations)


def _read_parquet(path: Path, raw: bytes) -> Table:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        data = pq.read_table(pa.BufferReader(raw)).to_pydict()
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: could not be read as Parquet ({exc}).") from exc
    rows = len(next(iter(data.values()))) if data else 0
    return Table(path, data, [f"row {i}" for i in range(1, rows + 1)])


def as_text(value: Any) -> str | None:
    """A cell as text, or None when it is missing (empty, null or NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = value if isinstance(value, str) else str(value)
    return text if text.strip() else None


def write_table(path: str | Path, columns: dict[str, list[Any]]) -> None:
    """Write columns as CSV/TSV, JSONL or Parquet (by the file's suffix), atomically."""
    from tuneloop.store.atomic import write_bytes_atomic

    path = Path(path)
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: expected an output file ending in one of {', '.join(sorted(SUFFIXES))}; "
                        f"found '{path.suffix or '(no suffix)'}'.")
    names = list(columns)
    rows = len(next(iter(columns.values()))) if columns else 0
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        sink = pa.BufferOutputStream()
        pq.write_table(pa.table(columns), sink)
        data = sink.getvalue().to_pybytes()
    elif kind == "jsonl":
        data = "".join(json.dumps({n: columns[n][i] for n in names}, ensure_ascii=False) + "\n"
                       for i in range(rows)).encode()
    else:
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter="," if kind == "csv" else "\t", lineterminator="\n")
        writer.writerow(names)
        writer.writerows([columns[n][i] for n in names] for i in range(rows))
        data = buffer.getvalue().encode()
    write_bytes_atomic(path, data)
