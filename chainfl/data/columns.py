"""Which columns of a labelled CSV are features: profiles, the id/text/constant rules, leak checks.

Pure: a :class:`Profiler` sees the file's cells chunk by chunk (the whole frame is one chunk when
it is in memory) and gives one :class:`ColumnProfile` per column; :func:`choose_features` turns the
profiles into a :class:`FeatureChoice`: the feature list, the id column and every other column
with the reason it is not a feature. The rules, in order, for a column that is not the label:

1. the id column (``id_column``, else ``Address``/``address``, else a text column of addresses or
   one unique per row): kept as the rows' ids, never a feature;
2. columns named in ``drop``;
3. **id-like** columns: a name such as ``Unnamed: 0``, ``index``, ``id``, ``row``, ``*_id``,
   ``address``, ``hash``; integers that are a permutation of a contiguous range (each of
   ``lo..hi`` exactly once, at least :data:`MIN_PERMUTATION_ROWS` rows: a row number whatever its
   name); text columns unique per row or made of addresses. A float column unique per row is a
   legitimate continuous feature and stays;
4. empty columns; **text** columns (some cell is not a number), unless listed in ``features``
   (then the caller encodes them, see :mod:`chainfl.data.prepare`);
5. with ``drop_constant``, columns constant over the file once blanks are filled.

A column that is numbers except for a few cells (at least 99 %) is most likely a typo, not text:
it raises a :class:`DataError` naming the first bad cell instead of vanishing from the features.
:func:`leak_warnings` flags a column that separates the labels on its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from chainfl.errors import DataError

#: Column names that are bookkeeping, not measurements (matched on the whole name, any case).
ID_NAME = re.compile(r"unnamed:\s*\d+|index|idx|ids?|rows?|row[\s_-]?(id|no|num|number)|rownum|rowid"
                     r"|uuid|guid|address|account|wallet|hash|(tx|txn|transaction|block)[\s_-]?hash"
                     r"|.*[\s_-](id|address|hash|uuid)", re.IGNORECASE)
#: camelCase ids ("accountId", "userID"); case-sensitive, so "paid" or "valid" do not match.
CAMEL_ID = re.compile(r".*[a-z](Id|ID)")
ADDRESS_VALUE = re.compile(r"0x[0-9a-fA-F]{40}")
#: Fewer rows than this and a permutation of 0..n-1 is too likely by chance to call it a row number.
MIN_PERMUTATION_ROWS = 20
#: The bitmap that checks "each of lo..hi once" may span this many values before the rows seen
#: justify more (PERMUTATION_SLACK per row): 16 MB, so a row number is found in any row order
#: for files of up to 16M rows, and a unique integer column of wide range costs at most that.
PERMUTATION_BITMAP = 1 << 24
PERMUTATION_SLACK = 64
#: A column whose non-empty cells are numbers at least this often is numeric with typos, not text.
TYPO_SHARE = 0.99
#: Single-feature ROC-AUC at or beyond these bounds (either direction) is reported as a leak.
LEAK_AUC = 0.99


def id_like_name(name: str) -> bool:
    """``True`` for names such as ``Unnamed: 0``, ``Index``, ``id``, ``user_id``, ``accountId``."""
    name = name.strip()
    return bool(ID_NAME.fullmatch(name) or CAMEL_ID.fullmatch(name))


@dataclass(frozen=True)
class ColumnProfile:
    """What one pass over a column found (cells are the raw strings; empty cells are missing)."""

    name: str
    rows: int
    missing: int                    # empty cells
    nonnumeric: int                 # non-empty cells that are not numbers
    first_bad: tuple[int, str] | None  # (record, cell) of the first non-numeric cell
    integer: bool                   # every number is a whole number
    distinct: tuple[float, ...]     # up to two distinct numbers (a constant column has one)
    permutation: tuple[int, int] | None  # (lo, hi) when the cells are each of lo..hi exactly once
    unique: bool | None             # every non-empty cell distinct (None: not tracked: numbers, streaming)
    address_like: bool              # every non-empty cell is 0x + 40 hex digits

    @property
    def filled(self) -> int:
        return self.rows - self.missing

    @property
    def kind(self) -> str:
        """``empty`` | ``numeric`` | ``typo`` (numbers but for a few cells) | ``text``."""
        if self.filled == 0:
            return "empty"
        if self.nonnumeric == 0:
            return "numeric"
        if (self.filled - self.nonnumeric) >= TYPO_SHARE * self.filled:
            return "typo"
        return "text"

    def constant(self, fill: float | None) -> bool:
        """One value over the file once blanks get ``fill`` (numeric columns)."""
        values = set(self.distinct)
        if self.missing and fill is not None:
            values.add(float(fill))
        return len(values) <= 1


class _Tracker:
    """Running state of one column; see :class:`ColumnProfile` for the fields."""

    __slots__ = ("name", "rows", "missing", "nonnumeric", "first_bad", "integer", "distinct",
                 "perm", "lo", "hi", "seen", "hashes", "address_like")

    def __init__(self, name: str, track_unique: bool):
        self.name = name
        self.rows = self.missing = self.nonnumeric = 0
        self.first_bad = None
        self.integer = True
        self.distinct: list[float] = []
        self.perm = True                     # still possibly a permutation of lo..hi
        self.lo = self.hi = None
        self.seen = None                     # bool bitmap over lo..hi while perm holds
        self.hashes = [] if track_unique else None
        self.address_like = True

    def update(self, cells: pd.Series, values: pd.Series, first_record: int) -> None:
        n = len(cells)
        empty = cells.isna().to_numpy()
        number = values.notna().to_numpy()
        bad = ~number & ~empty
        self.rows += n
        self.missing += int(empty.sum())
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            self.nonnumeric += int(bad.sum())
            if self.first_bad is None:
                self.first_bad = (first_record + i, str(cells.iloc[i]))
        nums = values.to_numpy(np.float64)[number]
        finite = nums[np.isfinite(nums)]
        if self.integer and len(finite) and not np.all(finite == np.floor(finite)):
            self.integer = False
        if len(self.distinct) < 2 and len(nums):
            for v in pd.unique(nums):
                if float(v) not in self.distinct:
                    self.distinct.append(float(v))
                if len(self.distinct) >= 2:
                    break
        if self.address_like:
            text = cells[~empty]
            if len(text) and not ADDRESS_VALUE.fullmatch(str(text.iloc[0])):
                self.address_like = False                # the usual case, decided on one cell
            elif len(text):
                self.address_like = bool(text.str.fullmatch(ADDRESS_VALUE.pattern).all())
        if self.hashes is not None:
            if self.nonnumeric == 0 and number.any():
                self.hashes = None                   # numbers so far: uniqueness is not a rule for them
            else:
                self.hashes.append(pd.util.hash_array(cells[~empty].to_numpy(object)))
        self._permutation(nums, bool(empty.any() or bad.any()) or len(nums) != len(finite))

    def _permutation(self, nums: np.ndarray, blemish: bool) -> None:
        """Keep a bitmap of the integers seen while they can still be each of lo..hi once; it is
        dropped at the first blank, fraction or repeat, or when the range outgrows any plausible
        row count, so only a real row-number column keeps it (1 byte per row)."""
        if not self.perm:
            return
        if blemish or not self.integer or (len(nums) and np.abs(nums).max() > 2 ** 53):
            self._no_perm()
            return
        if not len(nums):
            return
        v = nums.astype(np.int64)
        lo, hi = int(v.min()), int(v.max())
        lo = lo if self.lo is None else min(lo, self.lo)
        hi = hi if self.hi is None else max(hi, self.hi)
        if hi - lo + 1 > max(PERMUTATION_SLACK * self.rows, PERMUTATION_BITMAP):
            self._no_perm()                          # a range no row count will fill: not a row number
            return
        if self.seen is None:
            self.seen = np.zeros(hi - lo + 1, dtype=bool)
        elif lo < self.lo or hi > self.hi:
            grown = np.zeros(hi - lo + 1, dtype=bool)
            grown[self.lo - lo: self.lo - lo + len(self.seen)] = self.seen
            self.seen = grown
        self.lo, self.hi = lo, hi
        slots = v - lo
        if self.seen[slots].any() or len(np.unique(slots)) != len(slots):
            self._no_perm()
            return
        self.seen[slots] = True

    def _no_perm(self) -> None:
        self.perm, self.seen = False, None

    def result(self) -> ColumnProfile:
        permutation = None
        if (self.perm and self.seen is not None and self.rows >= MIN_PERMUTATION_ROWS
                and self.hi - self.lo + 1 == self.rows and self.seen.all()):
            permutation = (self.lo, self.hi)
        unique = None
        if self.hashes is not None:
            h = np.concatenate(self.hashes) if self.hashes else np.empty(0, np.uint64)
            unique = bool(len(np.unique(h)) == len(h))
        return ColumnProfile(self.name, self.rows, self.missing, self.nonnumeric, self.first_bad,
                             self.integer, tuple(self.distinct), permutation, unique,
                             bool(self.address_like and self.missing < self.rows))


class Profiler:
    """Profiles every column of a table seen in chunks of raw string cells.

    ``track_unique`` keeps a 64-bit hash per cell of text columns (8 bytes per row) to tell those
    unique per row; the streaming reader turns it off (text is not a feature either way).
    """

    def __init__(self, columns: Sequence[str], track_unique: bool = True):
        self._trackers = {c: _Tracker(c, track_unique) for c in columns}

    def update(self, chunk: pd.DataFrame, first_record: int, numbers: dict[str, pd.Series] | None = None):
        """Add a chunk (rows ``first_record..``); ``numbers`` may pass conversions already made."""
        for name, tracker in self._trackers.items():
            cells = chunk[name]
            values = numbers[name] if numbers and name in numbers else pd.to_numeric(cells, errors="coerce")
            tracker.update(cells, values, first_record)

    def result(self) -> dict[str, ColumnProfile]:
        return {name: t.result() for name, t in self._trackers.items()}


def profile_frame(frame: pd.DataFrame, track_unique: bool = True) -> dict[str, ColumnProfile]:
    """Profiles of an in-memory frame of string cells (record numbers from 0)."""
    profiler = Profiler(list(frame.columns), track_unique)
    profiler.update(frame, 0)
    return profiler.result()


# --- the rules -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class FeatureChoice:
    """The outcome of :func:`choose_features`."""

    features: tuple[str, ...]               # feature columns, in file order (or the order asked)
    id_column: str | None                   # the rows' ids (None: row numbers)
    dropped: tuple[tuple[str, str], ...]    # (column, reason) for every other non-label column
    text_features: tuple[str, ...] = ()     # text columns asked for in ``features`` (to encode)

    def dropped_dict(self) -> list[dict]:
        return [{"column": c, "reason": r} for c, r in self.dropped]


def choose_id_column(profiles: dict[str, ColumnProfile], label: str, id_column: str | None = None) -> str | None:
    """``id_column`` if given; else ``Address``/``address``; else the first text column of addresses
    or unique per row; else ``None`` (the caller uses row numbers)."""
    if id_column is not None:
        if id_column not in profiles:
            raise DataError(f"id column {id_column!r} not found; columns are {list(profiles)}", column=id_column)
        return id_column
    for name in profiles:
        if name != label and name.lower() == "address":
            return name
    for name, p in profiles.items():
        if name != label and p.kind == "text" and (p.address_like or p.unique):
            return name
    return None


def id_reason(p: ColumnProfile) -> str | None:
    """Why a column is id-like, or ``None``."""
    if id_like_name(p.name):
        return "id-like name (row numbers, indexes, ids and addresses are bookkeeping, not behaviour)"
    if p.permutation:
        lo, hi = p.permutation
        return f"id-like values: each integer {lo}..{hi} appears exactly once (a row number)"
    if p.kind == "text" and p.address_like:
        return "id-like values: every cell is an address"
    if p.kind == "text" and p.unique:
        return "id-like values: text unique per row"
    return None


def choose_features(profiles: dict[str, ColumnProfile], label: str, *,
                    features: Sequence[str] | None = None, drop: Iterable[str] = (),
                    id_column: str | None = None, fill: float | None = None,
                    drop_constant: bool = False, allow_text: bool = False, source: str = "") -> FeatureChoice:
    """Apply the rules of the module docstring. ``features`` replaces the automatic choice (still
    minus ``drop``); a text column in it is returned in ``text_features`` when ``allow_text``,
    else it is an error naming the fix. Unknown names are errors listing the columns."""
    where = f"{source}: " if source else ""
    columns = list(profiles)
    if label not in profiles:
        raise DataError(f"{where}label column {label!r} not found; columns are {columns}; pass --label COLUMN",
                        path=source or None, column=label)
    drop = [d.strip() for d in drop]
    _known(drop, profiles, where, source, "--drop")
    ident = choose_id_column(profiles, label, id_column)
    if ident == label:
        raise DataError(f"{where}the label column {label!r} cannot also be the id column", column=label)
    dropped: list[tuple[str, str]] = []
    if features is not None:
        features = [f.strip() for f in features]
        _known(features, profiles, where, source, "--features")
        if label in features:
            raise DataError(f"{where}the label {label!r} cannot be a feature; remove it from --features",
                            path=source or None, column=label)
        if ident in features:
            ident = None                               # the user wants it as a feature: ids are row numbers
        chosen, text = [], []
        for name in features:
            if name in drop or name in chosen:
                continue
            kind = profiles[name].kind
            if kind in ("text", "empty") and not allow_text:
                raise DataError(f"{where}column {name!r} is {_kind_detail(profiles[name])}; a feature must be "
                                f"numeric: encode it with `chainfl data prepare --features {name!r}` or "
                                f"leave it out", path=source or None, column=name)
            if kind == "typo":
                raise _typo(profiles[name], where, source)
            chosen.append(name)
            if kind in ("text", "empty"):
                text.append(name)
        for name in columns:
            if name not in chosen and name not in (label, ident):
                dropped.append((name, "dropped by --drop" if name in drop else "not listed in --features"))
        if ident is not None:
            dropped.insert(0, (ident, "id column (the rows' ids, kept beside the features)"))
        if not chosen:
            raise DataError(f"{where}no feature columns left after --features/--drop", path=source or None)
        return FeatureChoice(tuple(chosen), ident, tuple(dropped), tuple(text))
    chosen = []
    for name in columns:
        p = profiles[name]
        if name == label:
            continue
        if name == ident:
            dropped.append((name, "id column (the rows' ids, kept beside the features)"))
        elif name in drop:
            dropped.append((name, "dropped by --drop"))
        elif (reason := id_reason(p)) is not None:
            dropped.append((name, reason))
        elif p.kind == "empty":
            dropped.append((name, "every cell is empty"))
        elif p.kind == "text":
            how = ("list it in --features to encode it" if allow_text else
                   f"`chainfl data prepare --features {name!r}` encodes it")
            dropped.append((name, f"{_kind_detail(p)}; {how}"))
        elif p.kind == "typo":
            raise _typo(p, where, source)
        elif drop_constant and p.constant(fill):
            value = (list(p.distinct) or [fill])[0]
            dropped.append((name, f"constant: every row is {value:g}" + (" once blanks are filled" if p.missing else "")))
        else:
            chosen.append(name)
    if not chosen:
        raise DataError(f"{where}no numeric feature columns besides {label!r} (dropped: "
                        f"{', '.join(f'{c} ({r})' for c, r in dropped) or 'none'})", path=source or None)
    return FeatureChoice(tuple(chosen), ident, tuple(dropped))


def _known(names: Sequence[str], profiles, where: str, source: str, option: str) -> None:
    unknown = [n for n in names if n not in profiles]
    if unknown:
        raise DataError(f"{where}{option} names column(s) {unknown} that the file does not have; "
                        f"columns are {list(profiles)}", path=source or None, column=unknown[0])


def _kind_detail(p: ColumnProfile) -> str:
    if p.kind == "empty":
        return "empty in every row"
    example = f", e.g. {p.first_bad[1]!r}" if p.first_bad else ""
    return f"text ({p.nonnumeric} of {p.filled} cells are not numbers{example})"


def _typo(p: ColumnProfile, where: str, source: str) -> DataError:
    record, cell = p.first_bad
    return DataError(f"{where}column {p.name!r} holds numbers except in {p.nonnumeric} of {p.filled} cells "
                     f"(first: {cell!r}, data row {record + 1}); fix those cells, or leave the column out "
                     f"with --drop {p.name!r}", path=source or None, column=p.name, row=record)


# --- leaks -----------------------------------------------------------------------------------------

def single_feature_auc(x: np.ndarray, y: np.ndarray) -> float | None:
    """ROC-AUC of ranking the rows by ``x`` alone (ties count half); None with one class."""
    y = np.asarray(y).astype(bool)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return None
    ranks = pd.Series(np.asarray(x, dtype=np.float64)).rank(method="average").to_numpy()
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


@dataclass(frozen=True)
class LeakWarning:
    column: str
    auc: float

    @property
    def message(self) -> str:
        return (f"column {self.column!r} alone separates the labels (single-feature ROC-AUC "
                f"{self.auc:.3f}): real behaviour is rarely this clean; check it is not a row order, "
                f"an id or a by-product of the label, and leave it out with --drop {self.column!r}")

    def to_dict(self) -> dict:
        return {"column": self.column, "roc_auc": round(self.auc, 4), "message": self.message}


def leak_warnings(X: np.ndarray, y: np.ndarray, names: Sequence[str], bound: float = LEAK_AUC) -> list[LeakWarning]:
    """A :class:`LeakWarning` for each column whose single-feature ROC-AUC is >= ``bound`` or
    <= ``1 - bound``."""
    out = []
    for j, name in enumerate(names):
        auc = single_feature_auc(X[:, j], y)
        if auc is not None and (auc >= bound or auc <= 1 - bound):
            out.append(LeakWarning(name, auc))
    return out


__all__ = ["ColumnProfile", "Profiler", "profile_frame", "FeatureChoice", "choose_features",
           "choose_id_column", "id_like_name", "id_reason", "single_feature_auc", "leak_warnings",
           "LeakWarning", "MIN_PERMUTATION_ROWS", "LEAK_AUC"]
