"""Labelled account-level datasets: the real eth_fraud data and users' own CSV files.

A :class:`Dataset` is plain arrays plus names: ``X`` float32 ``[n, d]``, ``y`` int64 ``[n]`` in
{0, 1}, ``feature_names`` (``d`` names, see :mod:`chainfl.data.schema`), ``ids`` (one address or
row id per sample) and ``source`` (where it came from).

:func:`load_csv` loads a file (within :class:`CsvLimits`, checked first, converted chunk by chunk);
:func:`stream_feature_stats` computes a node's :class:`~chainfl.data.scaling.FeatureStats` from a
file of any size in bounded memory, bitwise equal to computing them on the loaded rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from chainfl import config
from chainfl.data import columns as cols
from chainfl.data import schema
from chainfl.data.csvfile import (CsvLimits, exact_sum_parts, iter_chunks, parse_labels, parse_numbers,
                                  read_frame, read_header)
from chainfl.data.scaling import FeatureStats, signed_log1p
from chainfl.errors import DataError


@dataclass(frozen=True)
class Dataset:
    """A labelled feature matrix. Rows are samples (accounts), columns ``feature_names``."""

    X: np.ndarray                 # float32 [n, d]
    y: np.ndarray                 # int64 [n], 0 = normal, 1 = anomalous
    feature_names: list[str]      # d names
    ids: list[str]                # n ids (addresses for chain data)
    source: str                   # file path or description

    def __post_init__(self):
        X = np.asarray(self.X, dtype=np.float32)
        y = np.asarray(self.y, dtype=np.int64)
        if X.ndim != 2 or y.shape != (X.shape[0],):
            raise DataError(f"{self.source}: X must be [n, d] and y [n]; got {X.shape} and {y.shape}")
        if len(self.feature_names) != X.shape[1] or len(self.ids) != X.shape[0]:
            raise DataError(f"{self.source}: {X.shape[1]} columns but {len(self.feature_names)} names, "
                            f"{X.shape[0]} rows but {len(self.ids)} ids")
        object.__setattr__(self, "X", X)
        object.__setattr__(self, "y", y)
        object.__setattr__(self, "feature_names", list(self.feature_names))
        object.__setattr__(self, "ids", list(self.ids))

    def __len__(self) -> int:
        return int(self.X.shape[0])

    @property
    def positive_rate(self) -> float:
        return float(self.y.mean()) if len(self) else 0.0

    def subset(self, indices) -> "Dataset":
        """Rows ``indices`` (e.g. one node's partition), same columns."""
        idx = np.asarray(indices, dtype=np.int64)
        return Dataset(self.X[idx], self.y[idx], self.feature_names, [self.ids[i] for i in idx], self.source)

    def select(self, names: Sequence[str]) -> "Dataset":
        """Columns ``names`` in that order; DataError names any that are missing."""
        missing = [n for n in names if n not in self.feature_names]
        if missing:
            raise DataError(f"{self.source}: no feature(s) {missing}; available: {self.feature_names}")
        cols = [self.feature_names.index(n) for n in names]
        return Dataset(self.X[:, cols], self.y, list(names), self.ids, self.source)

    def to_frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.X, columns=self.feature_names)
        frame.insert(0, "id", self.ids)
        frame["label"] = self.y
        return frame


# --- the real dataset --------------------------------------------------------------------------

def default_eth_fraud_path() -> Path:
    return config.data_dir() / "eth_fraud" / "transaction_dataset.csv"


def load_eth_fraud(path: str | Path | None = None, missing_flag: bool = False) -> Dataset:
    """Load the eth_fraud dataset (``CHAINFL_DATA_DIR/eth_fraud/transaction_dataset.csv``).

    What the loader does, in order:

    * column names lose their surrounding spaces (:func:`schema.canonical`); CRLF is handled;
    * the row number, ``Index`` and ``Address`` columns are not features (addresses become ``ids``);
      the two text columns (token names) are dropped;
    * 25 addresses appear twice, each time with the same label and history: the **first**
      occurrence is kept, so a duplicate can never sit on both sides of a train/test split;
    * the 829 rows whose ERC20 columns are all empty get 0 there (NaN -> 0). Those rows are 100 %
      fraud, an artefact of collection, so the default hides the missingness. ``missing_flag=True``
      appends a 0/1 column ``schema.MISSING_FLAG`` that exposes it (for comparison only);
    * columns constant over the file (7 in the real data) are dropped: 38 features remain.
    """
    path = Path(path) if path is not None else default_eth_fraud_path()
    if path.is_dir():
        path = path / "transaction_dataset.csv"
    if not path.exists():
        raise DataError(f"eth_fraud dataset not found at {path}; set CHAINFL_DATA_DIR to the directory "
                        f"that holds eth_fraud/transaction_dataset.csv", path=str(path))
    frame = read_frame(path)
    frame.columns = [schema.canonical(c) for c in frame.columns]
    required = [schema.ADDRESS, schema.LABEL, *schema.FEATURES]
    absent = [c for c in required if c not in frame.columns]
    if absent:
        raise DataError(f"{path}: not the eth_fraud dataset, columns {absent} are missing",
                        path=str(path), column=absent[0])
    frame = frame.drop_duplicates(subset=schema.ADDRESS, keep="first")     # index: record numbers
    features = pd.DataFrame({c: parse_numbers(frame[c], path, c, fill=0.0) for c in schema.FEATURES})
    erc20_empty = frame[list(schema.ERC20_FEATURES)].isna().all(axis=1).to_numpy()
    constant = [c for c in features.columns if features[c].nunique(dropna=False) <= 1]
    features = features.drop(columns=constant)
    if missing_flag:
        features[schema.MISSING_FLAG] = erc20_empty.astype(np.float64)
    labels = parse_labels(frame[schema.LABEL], path)
    return Dataset(features.to_numpy(np.float32), labels, list(features.columns),
                   frame[schema.ADDRESS].astype(str).str.lower().tolist(), str(path))


# --- users' own data ---------------------------------------------------------------------------

def load_csv(path: str | Path, label: str, features: Sequence[str] | None = None, *,
             drop: Iterable[str] = (), id_column: str | None = None, fill_missing: float | None = None,
             limits: CsvLimits | None = None, require_both_classes: bool = True,
             chunk_rows: int | None = None) -> Dataset:
    """Load a labelled CSV (UTF-8, header row, one sample per row) into memory.

    ``label`` names the 0/1 label column (also accepted: ``true``/``false``). ``features`` lists
    the feature columns; by default they are chosen by :func:`chainfl.data.columns.choose_features`
    (numeric columns that are not id-like: no row numbers, indexes, addresses), minus ``drop``.
    ``id_column`` defaults to ``Address`` when present, else row numbers are used. Empty cells are
    an error unless ``fill_missing`` gives a value for them. ``limits`` (default
    :class:`CsvLimits`) are checked before the file is read; it is then read in chunks that are
    converted to float32 at once, so the peak stays near the size of the result.

    Every problem raises :class:`DataError` naming the file, the column and, where one is at
    fault, the row as its **line number in the file** (the header is line 1).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file", path=str(path))
    (limits if limits is not None else CsvLimits()).check(path)
    reader = _FeatureReader(path, label, features, drop, fill_missing, id_column)
    keep_ids = reader.id_column is not None
    labels, ids, parts = [], [], {name: [] for name in reader.candidates}
    for start, chunk in iter_chunks(path, usecols=reader.usecols, chunk_rows=chunk_rows):
        labels.append(parse_labels(chunk[label], path))
        if keep_ids:
            ids.extend(chunk[reader.id_column].astype(str).tolist())
        for name, values in reader.values(start, chunk).items():
            parts[name].append(values.astype(np.float32))
    if not sum(len(part) for part in labels):
        raise DataError(f"{path}: the file has a header but no rows", path=str(path))
    choice = reader.choice()
    y = np.concatenate(labels)
    X = np.empty((len(y), len(choice.features)), dtype=np.float32)
    for j, name in enumerate(choice.features):
        X[:, j] = np.concatenate(parts.pop(name))
    if require_both_classes:
        _both_classes(y, path, label)
    return Dataset(X, y, list(choice.features), ids if keep_ids else [str(i) for i in range(len(y))], str(path))


class _FeatureReader:
    """The float64 values of the feature columns, chunk by chunk, and the feature choice at the
    end: the listed ``features`` (minus ``drop``), or every column that may still be one, profiled
    as it goes; a column that turns out to be text, or holds a blank without a fill, stops being
    converted and, if the rules still choose it, :meth:`choice` raises the error naming its line."""

    def __init__(self, path: Path, label: str, features, drop, fill, id_column):
        self.path, self.label, self.fill = path, label, fill
        header = read_header(path)
        if label not in header:
            raise DataError(f"{path}: label column {label!r} not found; columns are {header}", path=str(path),
                            column=label)
        if id_column is None and schema.ADDRESS in header and schema.ADDRESS != label:
            id_column = schema.ADDRESS
        if id_column is not None and id_column not in header:
            raise DataError(f"{path}: id column {id_column!r} not found", path=str(path), column=id_column)
        self.id_column = id_column
        self.drop = [d.strip() for d in drop]
        for name in list(features or ()) + self.drop:
            if name not in header:
                raise DataError(f"{path}: feature column {name!r} not found; columns are {header}",
                                path=str(path), column=name)
        if features is not None:
            self.candidates = [f for f in features if f not in self.drop]
            if not self.candidates:
                raise DataError(f"{path}: no feature columns left after --drop", path=str(path))
            self.profiler = None
            self.usecols = list(dict.fromkeys([*self.candidates, label, *([id_column] if id_column else [])]))
        else:
            self.candidates = [c for c in header if c != label]
            self.profiler = cols.Profiler(header, track_unique=False)
            self.usecols = header
        self.live = dict.fromkeys(self.candidates, True)

    def values(self, start: int, chunk: pd.DataFrame) -> dict[str, np.ndarray]:
        out, numbers = {}, {}
        for name in self.candidates:
            if not self.live[name]:
                continue
            if self.profiler is None:
                out[name] = parse_numbers(chunk[name], self.path, name, self.fill)
                continue
            values = numbers[name] = pd.to_numeric(chunk[name], errors="coerce")
            blank = chunk[name].isna()
            if (values.isna() & ~blank).any() or (blank.any() and self.fill is None):
                self.live[name] = False             # text, a typo, or a blank without a fill: see choice()
                continue
            values = (values.fillna(float(self.fill)) if blank.any() else values).to_numpy(np.float64)
            if not np.isfinite(values).all():       # ^ what parse_numbers gives for these cells
                self.live[name] = False
                continue
            out[name] = values
        if self.profiler is not None:
            self.profiler.update(chunk, start, numbers)
        return out

    def choice(self) -> cols.FeatureChoice:
        if self.profiler is None:
            return cols.FeatureChoice(tuple(self.candidates), self.id_column, ())
        choice = cols.choose_features(self.profiler.result(), self.label, drop=self.drop, id_column=self.id_column,
                                      source=str(self.path))
        for name in choice.features:
            if not self.live[name]:                 # raise the cell's own error, naming its line
                for _, chunk in iter_chunks(self.path, usecols=[name]):
                    parse_numbers(chunk[name], self.path, name, self.fill)
                raise DataError(f"{self.path}: column {name!r} could not be read as numbers",
                                path=str(self.path), column=name)
        return choice


def _both_classes(y: np.ndarray, path: Path, label: str) -> None:
    if len(np.unique(y)) < 2:
        raise DataError(f"{path}: column {label!r} holds only class {int(y[0])}; a detector needs "
                        f"examples of both 0 (normal) and 1 (anomalous)", path=str(path), column=label)


# --- bounded-memory statistics ---------------------------------------------------------------------

def read_labels(path: str | Path, label: str, chunk_rows: int | None = None, *,
                require_both_classes: bool = True) -> np.ndarray:
    """The label column alone, streamed (int8, one byte a row); the errors of :func:`load_csv`."""
    path = Path(path)
    if label not in read_header(path):
        raise DataError(f"{path}: label column {label!r} not found; columns are {read_header(path)}",
                        path=str(path), column=label)
    parts = [parse_labels(chunk[label], path).astype(np.int8)
             for _, chunk in iter_chunks(path, usecols=[label], chunk_rows=chunk_rows)]
    if not parts or not sum(len(p) for p in parts):
        raise DataError(f"{path}: the file has a header but no rows", path=str(path))
    y = np.concatenate(parts)
    if require_both_classes:
        _both_classes(y, path, label)
    return y


@dataclass(frozen=True)
class StreamedStats:
    """What :func:`stream_feature_stats` found: the statistics and how it chose the columns."""

    stats: FeatureStats
    choice: cols.FeatureChoice
    rows: int                      # data rows in the file


def stream_feature_stats(path: str | Path, label: str, rows: np.ndarray | None = None, *,
                         features: Sequence[str] | None = None, drop: Iterable[str] = (),
                         fill_missing: float | None = None, log="all",
                         chunk_rows: int | None = None, with_grid: bool = False) -> StreamedStats:
    """:class:`FeatureStats` of the rows selected by the boolean mask ``rows`` (default: all),
    reading ``path`` in chunks, so memory is one chunk plus a few bytes per row whatever the size.

    Bitwise equal to ``FeatureStats.compute(load_csv(...).X[rows], ...)``: the cells go through
    the same conversions (string -> float64 -> float32 -> signed log1p in float64), and the sums
    are kept exact across chunks (:func:`chainfl.data.csvfile.exact_sum_parts`) and rounded once.
    Without ``features`` the columns are chosen as :func:`load_csv` chooses them. ``with_grid``
    adds the rows per grid cell (:meth:`FeatureStats.compute`'s ``with_grid``), counted per chunk.
    """
    path = Path(path)
    reader = _FeatureReader(path, label, features, drop, fill_missing, None)
    candidates = reader.candidates
    mask = dict(zip(candidates, FeatureStats.compute(np.zeros((0, len(candidates))), candidates, log).log))
    sums = {c: [] for c in candidates}
    sumsq = {c: [] for c in candidates}
    count = n_rows = 0
    if with_grid:
        from chainfl.data.scaling import stats_grid
        from chainfl.learning.encoding import grid_boundaries

        boundaries, n_cells = grid_boundaries(stats_grid()), stats_grid().n_cells
        cells = {c: np.zeros(n_cells, dtype=np.int64) for c in candidates}
    usecols = [c for c in reader.usecols if c != label] if reader.profiler is None else reader.usecols
    for start, chunk in iter_chunks(path, usecols=usecols, chunk_rows=chunk_rows):
        n_rows += len(chunk)
        keep = slice(None) if rows is None else _chunk_mask(rows, start, len(chunk), path)
        for name, values in reader.values(start, chunk).items():
            t = values.astype(np.float32).astype(np.float64)[keep]
            if with_grid:
                if not np.all(np.isfinite(t)):
                    raise DataError(f"{path}: column {name!r} holds NaN or infinite values; fill them "
                                    f"(--fill 0) before counting bins", path=str(path))
                cells[name] += np.bincount(np.searchsorted(boundaries, t + 0.0, side="right"), minlength=n_cells)
            if mask[name]:
                t = signed_log1p(t)
            sums[name] = exact_sum_parts(t.tolist(), sums[name])
            sumsq[name] = exact_sum_parts((t * t).tolist(), sumsq[name])
        count += len(chunk) if rows is None else int(np.count_nonzero(keep))
    if n_rows == 0:
        raise DataError(f"{path}: the file has a header but no rows", path=str(path))
    if rows is not None and len(rows) != n_rows:
        raise DataError(f"{path}: the row mask has {len(rows)} entries but the file {n_rows} rows", path=str(path))
    choice = reader.choice()
    grid = None
    if with_grid:
        from chainfl.data.scaling import sparse_grid

        grid = sparse_grid(np.concatenate([cells[n] for n in choice.features]), len(choice.features))
    stats = FeatureStats(tuple(choice.features), tuple(mask[n] for n in choice.features), count,
                         tuple(math.fsum(sums[n]) for n in choice.features),
                         tuple(math.fsum(sumsq[n]) for n in choice.features), grid)
    return StreamedStats(stats, choice, n_rows)


def _chunk_mask(rows: np.ndarray, start: int, n: int, path: Path) -> np.ndarray:
    part = np.asarray(rows[start:start + n], dtype=bool)
    if len(part) != n:
        raise DataError(f"{path}: the row mask has {len(rows)} entries but the file has more rows", path=str(path))
    return part


__all__ = ["Dataset", "CsvLimits", "load_eth_fraud", "load_csv", "read_labels", "stream_feature_stats",
           "StreamedStats", "default_eth_fraud_path", "read_header"]
