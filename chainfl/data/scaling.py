"""Federated feature scaling: signed log1p, then standardisation agreed from aggregate statistics.

Why signed log1p first: ether amounts, counts and minute gaps are heavy-tailed (the real data has
values up to ~1e12 beside typical values near 1). ``sign(x) * log1p(|x|)`` maps 1e12 to 27.6, keeps
0 at 0, is monotone, and keeps the sign of the one signed feature (the balance), so the
standardised values are O(1) and float32 training is well conditioned. By default it is applied to
every column (``log="all"``); pass ``log="none"`` or a list of column names to change that.

Why aggregate statistics: each node shares only ``count``, ``sum`` and ``sum of squares`` of its
transformed columns (:class:`FeatureStats`), never rows. Sums are accumulated with ``math.fsum``
(correctly rounded), merging adds them with ``math.fsum`` again, so the merged mean and variance
equal the pooled computation over all nodes' rows up to float64 rounding (relative error ~1e-15),
whatever the split. Both :class:`FeatureStats` and :class:`Scaler` serialise to plain JSON
(``to_dict``/``from_dict``) so they can travel in a task config.

Optionally (``with_grid=True``; ``chainfl node stats --bins``) the statistics also hold the node's rows
per cell of the fixed grid of :mod:`chainfl.learning.encoding` (sparse ``[feature, cell, rows]``
triples), for models whose bins are agreed before the task starts (the chained ``newton``
model). Those counts reveal the node's marginal distribution of each raw feature at ~9 %
resolution; they are left out unless asked for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np

from chainfl.errors import DataError


def signed_log1p(x: np.ndarray) -> np.ndarray:
    """``sign(x) * log1p(|x|)`` in float64."""
    x = np.asarray(x, dtype=np.float64)
    return np.sign(x) * np.log1p(np.abs(x))


def _log_mask(feature_names: Sequence[str], log) -> tuple[bool, ...]:
    if log == "all":
        return tuple(True for _ in feature_names)
    if log == "none" or log is None:
        return tuple(False for _ in feature_names)
    if isinstance(log, str):
        raise DataError(f"log must be 'all', 'none' or a list of column names, got {log!r}")
    unknown = [n for n in log if n not in feature_names]
    if unknown:
        raise DataError(f"log lists column(s) {unknown} that are not features: {list(feature_names)}")
    chosen = set(log)
    return tuple(n in chosen for n in feature_names)


def _apply_log(X: np.ndarray, mask: Sequence[bool]) -> np.ndarray:
    X = np.array(X, dtype=np.float64, copy=True)
    if X.ndim != 2 or X.shape[1] != len(mask):
        raise DataError(f"expected a [n, {len(mask)}] matrix, got shape {X.shape}")
    cols = np.flatnonzero(np.asarray(mask, dtype=bool))
    X[:, cols] = signed_log1p(X[:, cols])
    return X


@dataclass(frozen=True)
class FeatureStats:
    """One node's (or a merged group's) aggregate statistics of the log-transformed columns."""

    feature_names: tuple[str, ...]
    log: tuple[bool, ...]          # which columns got signed log1p
    count: int                     # rows
    sum: tuple[float, ...]         # per column
    sumsq: tuple[float, ...]       # per column
    grid: tuple[tuple[int, int, int], ...] | None = None   # (feature, grid cell, rows), sorted; None: not shared

    @classmethod
    def compute(cls, X: np.ndarray, feature_names: Sequence[str], log="all", with_grid: bool = False) -> "FeatureStats":
        """Statistics of a node's own rows ``X`` ``[n, d]`` (``with_grid``: with the grid counts)."""
        mask = _log_mask(list(feature_names), log)
        T = _apply_log(X, mask)
        if not np.isfinite(T).all():
            raise DataError("features contain NaN or infinite values; clean them before scaling")
        sums = tuple(math.fsum(T[:, j]) for j in range(T.shape[1]))
        sumsq = tuple(math.fsum(T[:, j] * T[:, j]) for j in range(T.shape[1]))
        cells = None
        if with_grid:
            from chainfl.learning.encoding import bin_statistics

            cells = sparse_grid(bin_statistics(np.asarray(X, dtype=np.float32), stats_grid()), len(mask))
        return cls(tuple(feature_names), mask, int(T.shape[0]), sums, sumsq, cells)

    def grid_counts(self) -> np.ndarray:
        """The dense grid counts ``[d * n_cells]`` (float64) of :func:`stats_grid`; DataError without them."""
        if self.grid is None:
            raise DataError("these statistics carry no grid counts; recompute them with "
                            "`chainfl node stats --bins` (the newton model agrees its bins from them)")
        d, C = len(self.feature_names), stats_grid().n_cells
        out = np.zeros(d * C, dtype=np.float64)
        for j, c, n in self.grid:
            out[j * C + c] += n
        return out

    @classmethod
    def merge(cls, parts: Sequence["FeatureStats"]) -> "FeatureStats":
        """Exact combination of several nodes' statistics (same columns and log choice required)."""
        parts = list(parts)
        if not parts:
            raise DataError("no statistics to merge: at least one node must report")
        first = parts[0]
        for p in parts[1:]:
            if p.feature_names != first.feature_names or p.log != first.log:
                raise DataError("nodes reported statistics for different columns or log settings; "
                                "all nodes must use the same feature list and log choice")
        d = len(first.feature_names)
        cells = None
        if all(p.grid is not None for p in parts):
            cells = sparse_grid(sum(p.grid_counts() for p in parts), d)
        return cls(first.feature_names, first.log, sum(p.count for p in parts),
                   tuple(math.fsum(p.sum[j] for p in parts) for j in range(d)),
                   tuple(math.fsum(p.sumsq[j] for p in parts) for j in range(d)), cells)

    def to_dict(self) -> dict:
        out = {"feature_names": list(self.feature_names), "log": list(self.log), "count": self.count,
               "sum": list(self.sum), "sumsq": list(self.sumsq)}
        if self.grid is not None:
            out["grid"] = {**stats_grid().to_dict(), "cells": [list(t) for t in self.grid]}
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureStats":
        try:
            out = cls(tuple(d["feature_names"]), tuple(bool(v) for v in d["log"]), int(d["count"]),
                      tuple(float(v) for v in d["sum"]), tuple(float(v) for v in d["sumsq"]),
                      _read_grid(d["grid"]) if d.get("grid") is not None else None)
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"malformed feature statistics: {e!r}") from e
        n = len(out.feature_names)
        if not (len(out.log) == len(out.sum) == len(out.sumsq) == n) or out.count < 0:
            raise DataError("malformed feature statistics: column lists differ in length or count < 0")
        if out.grid is not None:
            C = stats_grid().n_cells
            per_feature = [0] * n                        # Python ints: no wrap-around
            for j, c, rows in out.grid:
                if not (0 <= j < n and 0 <= c < C and 1 <= rows <= out.count):
                    raise DataError(f"malformed feature statistics: grid entry {[j, c, rows]} is not "
                                    f"[feature < {n}, cell < {C}, 1 <= rows <= {out.count}]")
                per_feature[j] += rows
            per_feature = np.asarray(per_feature, dtype=np.int64)
            keys = [(j, c) for j, c, _ in out.grid]
            if keys != sorted(set(keys)):
                raise DataError("malformed feature statistics: grid entries are not sorted and unique")
            if np.any(per_feature != out.count):
                bad = int(np.flatnonzero(per_feature != out.count)[0])
                raise DataError(f"malformed feature statistics: the grid counts {int(per_feature[bad])} rows "
                                f"of feature {bad}, the statistics {out.count}")
        return out


@lru_cache(maxsize=1)
def stats_grid() -> "BinConfig":
    """The fixed grid node statistics count on (:class:`chainfl.learning.encoding.BinConfig` defaults)."""
    from chainfl.learning.encoding import BinConfig

    return BinConfig()


def sparse_grid(counts: np.ndarray, n_features: int) -> tuple[tuple[int, int, int], ...]:
    """Dense grid counts ``[d * n_cells]`` -> sorted ``(feature, cell, rows)`` triples of the non-empty cells."""
    C = stats_grid().n_cells
    counts = np.asarray(counts)
    nz = np.flatnonzero(counts)
    return tuple((int(i // C), int(i % C), int(round(float(counts[i])))) for i in nz)


def _strict_int(v, what: str) -> int:
    if type(v) is not int:                       # no bools, floats or strings
        raise ValueError(f"{what} {v!r} is not an integer")
    return v


def _read_grid(g) -> tuple[tuple[int, int, int], ...]:
    """The grid triples of a statistics JSON, strictly typed (ValueError names what is wrong)."""
    if not isinstance(g, dict) or not isinstance(g.get("cells"), list):
        raise ValueError("grid must be an object with a 'cells' list")
    settings = {k: _strict_int(v, f"grid setting {k}") for k, v in g.items() if k != "cells"}
    if settings != {k: int(v) for k, v in stats_grid().to_dict().items()}:
        raise ValueError(f"grid {settings} is not this chainfl's grid {stats_grid().to_dict()}")
    cells = g["cells"]
    if len(cells) > MAX_GRID_CELLS:
        raise ValueError(f"grid has {len(cells)} cells, more than {MAX_GRID_CELLS}")
    out = []
    for t in cells:
        if not isinstance(t, list) or len(t) != 3:
            raise ValueError(f"grid entry {t!r} is not [feature, cell, rows]")
        out.append(tuple(_strict_int(v, "grid entry value") for v in t))
    return tuple(out)


#: Most grid entries a statistics file may hold (every cell of 512 features).
MAX_GRID_CELLS = 512 * 2052


@dataclass(frozen=True)
class Scaler:
    """``transform(X) = (signed_log1p(X)[log columns] - mean) / std`` as float32.

    ``std`` is the population standard deviation; a constant column gets std 1 (it maps to 0).
    """

    feature_names: tuple[str, ...]
    log: tuple[bool, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    count: int = 0                 # rows the statistics came from (informational)

    @classmethod
    def from_stats(cls, stats: FeatureStats) -> "Scaler":
        if stats.count < 1:
            raise DataError("cannot fit a scaler on zero rows")
        n = stats.count
        mean = tuple(s / n for s in stats.sum)
        std = []
        for m, q in zip(mean, stats.sumsq):
            var = max(q / n - m * m, 0.0)
            s = math.sqrt(var)
            std.append(s if s > 1e-12 * max(1.0, abs(m)) else 1.0)
        return cls(stats.feature_names, stats.log, mean, tuple(std), n)

    @classmethod
    def fit(cls, X: np.ndarray, feature_names: Sequence[str], log="all") -> "Scaler":
        """Centralised fit (same result as merging per-node statistics of the same rows)."""
        return cls.from_stats(FeatureStats.compute(X, feature_names, log))

    @classmethod
    def federated(cls, node_stats: Sequence[FeatureStats]) -> "Scaler":
        return cls.from_stats(FeatureStats.merge(node_stats))

    def transform(self, X: np.ndarray) -> np.ndarray:
        T = _apply_log(X, self.log)
        return ((T - np.asarray(self.mean)) / np.asarray(self.std)).astype(np.float32)

    def to_dict(self) -> dict:
        return {"feature_names": list(self.feature_names), "log": list(self.log),
                "mean": list(self.mean), "std": list(self.std), "count": self.count}

    @classmethod
    def from_dict(cls, d: dict) -> "Scaler":
        try:
            out = cls(tuple(d["feature_names"]), tuple(bool(v) for v in d["log"]),
                      tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"]),
                      int(d.get("count", 0)))
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"malformed scaler: {e!r}; expected keys feature_names, log, mean, std") from e
        n = len(out.feature_names)
        if not (len(out.log) == len(out.mean) == len(out.std) == n) or min(out.std, default=1.0) <= 0:
            raise DataError("malformed scaler: column lists differ in length or a std is not positive")
        return out
