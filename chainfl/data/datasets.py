"""Labelled account-level datasets: the real eth_fraud data and users' own CSV files.

A :class:`Dataset` is plain arrays plus names: ``X`` float32 ``[n, d]``, ``y`` int64 ``[n]`` in
{0, 1}, ``feature_names`` (``d`` names, see :mod:`chainfl.data.schema`), ``ids`` (one address or
row id per sample) and ``source`` (where it came from).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from chainfl import config
from chainfl.data import schema
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
    frame = _read_frame(path)
    frame.columns = [schema.canonical(c) for c in frame.columns]
    required = [schema.ADDRESS, schema.LABEL, *schema.FEATURES]
    absent = [c for c in required if c not in frame.columns]
    if absent:
        raise DataError(f"{path}: not the eth_fraud dataset, columns {absent} are missing",
                        path=str(path), column=absent[0])
    frame = frame.drop_duplicates(subset=schema.ADDRESS, keep="first")
    raw = frame[list(schema.FEATURES)]
    features = raw.apply(pd.to_numeric, errors="coerce").astype(np.float64)
    bad = (features.isna() & raw.notna()).to_numpy()
    if bad.any():
        r, c = (int(v[0]) for v in np.nonzero(bad))
        line = int(frame.index[r])              # the index holds each row's line in the file
        column = str(raw.columns[c])
        raise DataError(f"{path}: column {column!r} line {line}: {raw.iloc[r, c]!r} is not a number; "
                        f"fix or blank that cell", path=str(path), column=column, row=line)
    frame = frame.reset_index(drop=True)
    features = features.reset_index(drop=True)
    erc20_empty = features[list(schema.ERC20_FEATURES)].isna().all(axis=1).to_numpy()
    features = features.fillna(0.0)
    constant = [c for c in features.columns if features[c].nunique(dropna=False) <= 1]
    features = features.drop(columns=constant)
    if missing_flag:
        features[schema.MISSING_FLAG] = erc20_empty.astype(np.float64)
    labels = _binary_labels(frame[schema.LABEL], path)
    return Dataset(features.to_numpy(np.float32), labels, list(features.columns),
                   frame[schema.ADDRESS].astype(str).str.lower().tolist(), str(path))


# --- users' own data ---------------------------------------------------------------------------

def load_csv(path: str | Path, label: str, features: Sequence[str] | None = None, *,
             id_column: str | None = None, fill_missing: float | None = None) -> Dataset:
    """Load a labelled CSV (UTF-8, header row, one sample per row).

    ``label`` names the 0/1 label column (also accepted: ``true``/``false``). ``features`` lists
    the feature columns (default: every other numeric column except ``id_column``). ``id_column``
    defaults to ``Address`` when present, else row numbers are used. Empty cells are an error
    unless ``fill_missing`` gives a value for them.

    Every problem raises :class:`DataError` naming the file, the column and, where one is at
    fault, the row as its **line number in the file** (the header is line 1).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file", path=str(path))
    frame = _read_frame(path)
    frame.columns = [str(c).strip() for c in frame.columns]
    if frame.shape[0] == 0:
        raise DataError(f"{path}: the file has a header but no rows", path=str(path))
    if label not in frame.columns:
        raise DataError(f"{path}: label column {label!r} not found; columns are {list(frame.columns)}",
                        path=str(path), column=label)
    if id_column is None and schema.ADDRESS in frame.columns and schema.ADDRESS != label:
        id_column = schema.ADDRESS
    if id_column is not None and id_column not in frame.columns:
        raise DataError(f"{path}: id column {id_column!r} not found", path=str(path), column=id_column)
    if features is None:
        features = [c for c in frame.columns if c not in (label, id_column)
                    and pd.to_numeric(frame[c], errors="coerce").notna().any()]
        if not features:
            raise DataError(f"{path}: no numeric feature columns besides {label!r}", path=str(path))
    else:
        for name in features:
            if name not in frame.columns:
                raise DataError(f"{path}: feature column {name!r} not found; columns are {list(frame.columns)}",
                                path=str(path), column=name)
    y = _binary_labels(frame[label], path)
    X = np.empty((len(frame), len(features)), dtype=np.float64)
    for j, name in enumerate(features):
        X[:, j] = _numeric_column(frame[name], path, name, fill_missing)
    if len(np.unique(y)) < 2:
        raise DataError(f"{path}: column {label!r} holds only class {int(y[0])}; a detector needs "
                        f"examples of both 0 (normal) and 1 (anomalous)", path=str(path), column=label)
    ids = (frame[id_column].astype(str).tolist() if id_column is not None
           else [str(i) for i in range(len(frame))])
    return Dataset(X.astype(np.float32), y, list(features), ids, str(path))


# --- helpers -----------------------------------------------------------------------------------

def _read_frame(path: Path) -> pd.DataFrame:
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"{path}: the file is empty; expected a CSV with a header row", path=str(path))
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line} is not UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}); "
                        f"re-save the file as UTF-8", path=str(path), row=line) from e
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_values=[""])
    except pd.errors.ParserError as e:
        raise DataError(f"{path}: not a valid CSV: {e}", path=str(path)) from e
    frame.index = _record_lines(text, len(frame))
    return frame


def _record_lines(text: str, n_records: int) -> pd.Index:
    """The file line on which each data record starts (header = line 1), so that error messages
    point at the right line also when blank lines (which pandas skips) or quoted multi-line cells
    come first."""
    reader = csv.reader(io.StringIO(text))
    lines, end = [], 0
    for row in reader:
        if row:                               # csv yields [] for a blank line; pandas skips it
            lines.append(end + 1)
        end = reader.line_num
    lines = lines[1:]                         # the header
    if len(lines) != n_records:               # dialects csv and pandas read differently: best effort
        return pd.RangeIndex(2, n_records + 2)
    return pd.Index(lines)


def _numeric_column(column: pd.Series, path: Path, name: str, fill: float | None) -> np.ndarray:
    values = pd.to_numeric(column, errors="coerce")
    bad = values.isna() & column.notna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        line = int(column.index[i])
        raise DataError(f"{path}: column {name!r} line {line}: {column.iloc[i]!r} is not a number",
                        path=str(path), column=name, row=line)
    if values.isna().any():
        if fill is None:
            i = int(np.flatnonzero(values.isna().to_numpy())[0])
            line = int(column.index[i])
            raise DataError(f"{path}: column {name!r} line {line} is empty; fill it or pass "
                            f"fill_missing=<value>", path=str(path), column=name, row=line)
        values = values.fillna(fill)
    array = values.to_numpy(np.float64)
    if not np.isfinite(array).all():
        i = int(np.flatnonzero(~np.isfinite(array))[0])
        line = int(column.index[i])
        raise DataError(f"{path}: column {name!r} line {line}: {column.iloc[i]!r} is not finite",
                        path=str(path), column=name, row=line)
    return array


_LABEL_WORDS = {"0": 0, "1": 1, "0.0": 0, "1.0": 1, "false": 0, "true": 1}


def _binary_labels(column: pd.Series, path: Path) -> np.ndarray:
    name = str(column.name)
    out = np.empty(len(column), dtype=np.int64)
    for i, (line, value) in enumerate(zip(column.index, column.tolist())):
        key = str(value).strip().lower() if value is not None and value == value else ""
        if key not in _LABEL_WORDS:
            shown = "an empty cell" if key == "" else repr(value)
            raise DataError(f"{path}: label column {name!r} line {line} holds {shown}; labels must be "
                            f"0 (normal) or 1 (anomalous)", path=str(path), column=name, row=int(line))
        out[i] = _LABEL_WORDS[key]
    return out
