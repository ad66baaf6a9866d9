"""Reading a labelled CSV: caps, header, whole or in chunks, cells to numbers and labels.

Cells are read as strings (empty cell = missing) and converted by :func:`parse_numbers` and
:func:`parse_labels`, the same way whether the file is read whole (:func:`read_frame`) or in
bounded chunks (:func:`iter_chunks`), so both give bitwise the same values. Frames are indexed by
**record number** (0 = the first data row); errors name the file, the column and the record's
**line in the file** (header = line 1), found by :func:`record_line` only when an error is raised.

:class:`CsvLimits` caps what may be loaded into memory (training data, ``data prepare``); it
is checked before anything is read (:meth:`CsvLimits.check`). Streaming readers need no cap.
"""

from __future__ import annotations

import codecs
import csv
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from chainfl.errors import DataError

_READ = dict(dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8-sig")
#: Cells per chunk when streaming (about 60 MB of Python strings at ~60 bytes a cell).
CHUNK_CELLS = 1_000_000


@dataclass(frozen=True)
class CsvLimits:
    """Caps on a CSV read into memory; ``None`` = no cap.

    ``load_csv`` (training data) converts the file chunk by chunk, so its peak is about twice the
    file (the float32 matrix, the ids as strings, one chunk: 1.9 GB for a 1 GiB file, measured in
    benchmarks/results/csv_memory.md); the 1 GiB default keeps it near 2 GB, inside a common 8 GB
    machine with room for training. 2,000,000 rows is 200x the real data (9,841 rows) and a 400 MB
    float32 matrix at 50 features. ``data prepare`` keeps every cell as text while it works (about
    8.5x the file: 2.2 GB for 256 MiB), so it caps at :data:`PREPARE_LIMITS` (512 MiB, ~4.3 GB) by
    default. ``chainfl node stats`` streams and needs no cap (0.2 GB for a 2 GiB file).
    """

    max_bytes: int | None = 1 << 30         # file size, bytes (1 GiB)
    max_rows: int | None = 2_000_000        # data rows (the header excluded)

    def __post_init__(self):
        for name in ("max_bytes", "max_rows"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
                raise DataError(f"CsvLimits.{name} must be a positive integer or None (no cap), got {value!r}")

    @classmethod
    def from_options(cls, max_bytes: int | None = None, max_rows: int | None = None,
                     default: "CsvLimits | None" = None) -> "CsvLimits":
        """From command-line values: ``None`` keeps ``default`` (``CsvLimits()``), ``0`` = no cap."""
        default = default if default is not None else cls()
        pick = (lambda v, d: d if v is None else (None if int(v) == 0 else int(v)))
        return cls(pick(max_bytes, default.max_bytes), pick(max_rows, default.max_rows))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CsvLimits":
        unknown = set(d) - {"max_bytes", "max_rows"}
        if unknown:
            raise DataError(f"unknown CSV limit(s) {sorted(unknown)}; known: max_bytes, max_rows")
        return cls(**{k: (None if v is None else int(v)) for k, v in d.items()})

    def check(self, path: str | Path) -> None:
        """Raise :class:`DataError` if the file is over a cap, reading no more than needed: the
        size from the file system, then newlines counted in 1 MiB blocks (an upper bound on the
        rows); only a file with more newlines than ``max_rows`` has its records counted."""
        path = Path(path)
        size = path.stat().st_size
        if self.max_bytes is not None and size > self.max_bytes:
            raise DataError(f"{path}: {size:,} bytes ({_size(size)}) is over the cap of {self.max_bytes:,} bytes "
                            f"({_size(self.max_bytes)}) on a CSV loaded into memory (max_bytes); raise it "
                            f"with --max-bytes BYTES (or "
                            f"CHAINFL_CSV_MAX_BYTES; 0 = no cap) or split the file with `chainfl data "
                            f"prepare`", path=str(path))
        if self.max_rows is None:
            return
        newlines = 0
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                newlines += block.count(b"\n")
        if newlines <= self.max_rows:
            return
        rows = 0
        for _, chunk in iter_chunks(path, usecols=read_header(path)[:1]):
            rows += len(chunk)
            if rows > self.max_rows:
                raise DataError(f"{path}: more than {self.max_rows:,} data rows, the cap on a CSV loaded "
                                f"into memory (max_rows); raise it with --max-rows N (or "
                                f"CHAINFL_CSV_MAX_ROWS; 0 = no cap) or split the file with `chainfl data "
                                f"prepare`", path=str(path))


#: The default caps of ``chainfl data prepare``, which holds every cell as text while it works.
PREPARE_LIMITS = CsvLimits(max_bytes=512 << 20, max_rows=2_000_000)


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


# --- reading -----------------------------------------------------------------------------------

def _exists(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path}: no such file", path=str(path))
    if path.is_dir():
        raise DataError(f"{path}: is a directory; pass the CSV file", path=str(path))


def read_header(path: str | Path) -> list[str]:
    """The column names as the readers name them (surrounding spaces removed; an empty header
    cell is ``Unnamed: <position>``)."""
    path = Path(path)
    _exists(path)
    try:
        names = [str(c).strip() for c in pd.read_csv(path, nrows=0, **_READ).columns]
    except pd.errors.EmptyDataError as e:
        raise DataError(f"{path}: the file is empty; expected a CSV with a header row", path=str(path)) from e
    except UnicodeDecodeError as e:
        raise utf8_error(path) from e
    except (pd.errors.ParserError, ValueError) as e:
        raise DataError(f"{path}: not a valid CSV: {e}", path=str(path)) from e
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DataError(f"{path}: column name(s) {twice} appear more than once once surrounding spaces are "
                        f"removed; rename them so each column has its own name", path=str(path), column=twice[0])
    return names


def _usecols(path: Path, usecols: Sequence[str] | None):
    if usecols is None:
        return None
    names = read_header(path)
    missing = [c for c in usecols if c not in names]
    if missing:
        raise DataError(f"{path}: column(s) {missing} not found; columns are {names}", path=str(path),
                        column=missing[0])
    return [i for i, n in enumerate(names) if n in set(usecols)]


def read_frame(path: str | Path, usecols: Sequence[str] | None = None) -> pd.DataFrame:
    """The whole file as string cells (NaN = empty), columns stripped, indexed by record."""
    path = Path(path)
    _exists(path)
    cols = _usecols(path, usecols)
    try:
        frame = pd.read_csv(path, usecols=cols, **_READ)
    except pd.errors.EmptyDataError as e:
        raise DataError(f"{path}: the file is empty; expected a CSV with a header row", path=str(path)) from e
    except UnicodeDecodeError as e:
        raise utf8_error(path) from e
    except (pd.errors.ParserError, ValueError) as e:
        raise DataError(f"{path}: not a valid CSV: {e}", path=str(path)) from e
    frame.columns = [str(c).strip() for c in frame.columns]
    frame.index = pd.RangeIndex(len(frame))
    return frame


def chunk_rows_for(n_columns: int) -> int:
    return max(1_000, CHUNK_CELLS // max(1, n_columns))


def iter_chunks(path: str | Path, usecols: Sequence[str] | None = None,
                chunk_rows: int | None = None) -> Iterator[tuple[int, pd.DataFrame]]:
    """``(first_record, frame)`` for consecutive chunks of the file (string cells, indexed by
    record); memory stays that of one chunk whatever the file size."""
    path = Path(path)
    header = read_header(path)
    cols = _usecols(path, usecols)
    rows = chunk_rows or chunk_rows_for(len(header))      # the parser tokenizes every column, used or not
    start = 0
    try:
        with pd.read_csv(path, usecols=cols, chunksize=rows, **_READ) as reader:
            for chunk in reader:
                chunk.columns = [str(c).strip() for c in chunk.columns]
                chunk.index = pd.RangeIndex(start, start + len(chunk))
                yield start, chunk
                start += len(chunk)
    except pd.errors.EmptyDataError as e:
        raise DataError(f"{path}: the file is empty; expected a CSV with a header row", path=str(path)) from e
    except UnicodeDecodeError as e:
        raise utf8_error(path) from e
    except pd.errors.ParserError as e:
        raise DataError(f"{path}: not a valid CSV: {e}", path=str(path)) from e


def utf8_error(path: Path) -> DataError:
    """The DataError for the first byte of ``path`` that is not UTF-8 (scanned in blocks)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, line = 0, 1
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            pending = len(decoder.getstate()[0])
            try:
                decoder.decode(block)
            except UnicodeDecodeError as e:
                data = e.object
                at = offset - pending + e.start
                line += data[:e.start].count(b"\n")
                return DataError(f"{path}: line {line} is not UTF-8 (byte 0x{data[e.start]:02x} at offset {at}); "
                                 f"re-save the file as UTF-8", path=str(path), row=line)
            offset += len(block)
            line += block.count(b"\n")
    return DataError(f"{path}: the file is not UTF-8 at its end; re-save it as UTF-8", path=str(path))


def record_line(path: str | Path, record: int) -> int:
    """The line on which data record ``record`` starts (header = line 1), also after blank lines
    (which the reader skips) or quoted cells spanning lines. Reads up to that record."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            seen, end = -1, 0                         # -1: the header comes first
            for row in reader:
                if row:
                    if seen == record:
                        return end + 1
                    seen += 1
                end = reader.line_num
    except (OSError, UnicodeDecodeError, csv.Error):
        pass
    return record + 2                                 # dialects differ: best effort


# --- cells -> values -----------------------------------------------------------------------------

def parse_numbers(cells: pd.Series, path: Path, name: str, fill: float | None) -> np.ndarray:
    """float64 values of a column of string cells; empty cells get ``fill`` (None: an error)."""
    values = pd.to_numeric(cells, errors="coerce")
    bad = values.isna() & cells.notna()
    if bad.any():
        record = int(cells.index[int(np.flatnonzero(bad.to_numpy())[0])])
        line = record_line(path, record)
        raise DataError(f"{path}: column {name!r} line {line}: {cells[record]!r} is not a number; fix the "
                        f"cell, or leave the column out with --drop {name!r} (a text column is encoded by "
                        f"`chainfl data prepare --features {name!r}`)", path=str(path), column=name, row=line)
    if values.isna().any():
        if fill is None:
            record = int(cells.index[int(np.flatnonzero(values.isna().to_numpy())[0])])
            line = record_line(path, record)
            raise DataError(f"{path}: column {name!r} line {line} is empty; fill it, or pass --fill VALUE "
                            f"(fill_missing=VALUE in Python)", path=str(path), column=name, row=line)
        values = values.fillna(float(fill))
    array = values.to_numpy(np.float64)
    if not np.isfinite(array).all():
        record = int(cells.index[int(np.flatnonzero(~np.isfinite(array))[0])])
        line = record_line(path, record)
        raise DataError(f"{path}: column {name!r} line {line}: {cells[record]!r} is not finite",
                        path=str(path), column=name, row=line)
    return array


_LABEL_WORDS = {"0": 0, "1": 1, "0.0": 0, "1.0": 1, "false": 0, "true": 1}


def parse_labels(cells: pd.Series, path: Path) -> np.ndarray:
    """int64 0/1 labels from cells ``0``/``1`` (also ``0.0``, ``1.0``, ``true``, ``false``)."""
    name = str(cells.name)
    keys = cells.fillna("").astype(str).str.strip().str.lower()
    codes = keys.map(_LABEL_WORDS)
    if codes.isna().any():
        record = int(cells.index[int(np.flatnonzero(codes.isna().to_numpy())[0])])
        value = cells[record]
        shown = "an empty cell" if keys[record] == "" else repr(value)
        line = record_line(path, record)
        raise DataError(f"{path}: label column {name!r} line {line} holds {shown}; labels must be "
                        f"0 (normal) or 1 (anomalous)", path=str(path), column=name, row=line)
    return codes.to_numpy(np.int64)


def exact_sum_parts(values, parts: list[float] | None = None) -> list[float]:
    """Floats whose exact sum is exactly ``sum(values) + sum(parts)``.

    ``math.fsum`` rounds the exact sum once; the rounding error is itself summed exactly by the
    next ``fsum`` and so on until nothing is left, so chunks can be summed one at a time and
    ``math.fsum`` of all the parts at the end equals ``math.fsum`` over every value at once,
    bit for bit. Usually two or three parts.
    """
    values = list(values) + list(parts or ())
    out: list[float] = []
    while True:
        s = math.fsum(values + [-p for p in out])
        if s == 0.0:
            return out
        out.append(s)
