"""Shared feature bins agreed from per-node histograms, and the piecewise-linear encoding (PLE).

Both the histogram GBDT (:mod:`chainfl.learning.gbdt`) and the PLE-MLP need per-feature bin
edges that every node applies identically, agreed without any row leaving a node:

1. **A fixed grid.** Every float is placed in a cell of a data-independent, logarithmic grid
   (:func:`grid_boundaries`): ``2**mantissa_bits`` cells per octave of ``|x|`` for
   ``2**min_exponent <= |x| < 2**max_exponent``, mirrored for negative values, with ``0`` in a
   cell of its own (``[0, 2**min_exponent)``) and one open cell at each end. With the defaults
   (8 cells per octave, octaves -64..63) that is 2,052 cells covering 1e-18..1e19 at ~9 %
   relative resolution, and every integer up to 8 in its own cell. Every boundary is exactly
   representable in float32, so a node compares its float32 features with them exactly.
2. **Node side.** A node counts its rows per (feature, cell): :func:`bin_statistics` returns one
   flat float32 vector of integers ``[d * n_cells]`` (the round's "update").
3. **Coordinator side.** The counts of all nodes are summed (integers: exact in any order) and
   :func:`edges_from_counts` cuts each feature into at most ``max_bins`` equal-frequency bins
   whose edges are grid boundaries (a feature with at most ``max_bins`` non-empty cells gets one
   bin per cell, cut in the middle of the empty cells between them). Pure integer arithmetic, so
   the coordinator and an auditor get the same edges bit for bit.

The merged counts are exactly what pooling all rows on the same grid would give, so the edges
equal pooled quantile edges at grid resolution. Privacy: a node's per-cell counts reveal its
marginal feature distributions at grid resolution (not its rows); a cell holding one of a
node's rows reveals that row's value to ~9 %.

The **piecewise-linear encoding** (Gorishniy, Rubachev, Babenko, "On Embeddings for Numerical
Features in Tabular Deep Learning", NeurIPS 2022) maps a value in bin ``t`` of ``[b_0, ..., b_T]``
to ``T`` components: 1 for the bins below, ``(x - b_{t-1}) / (b_t - b_{t-1})`` in its own, 0 above,
here computed on ``signed_log1p`` values (the heavy tails) and clipped to ``[0, 1]``. The outer
bounds ``b_0``, ``b_T`` are the first and last non-empty grid cells' bounds. :class:`PLEncoder`
is a frozen, JSON-able transform (its edges travel in the task config like the scaler).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np

from chainfl.errors import LearningError


# --- the fixed grid --------------------------------------------------------------------------

@dataclass(frozen=True)
class BinConfig:
    """The fixed grid the nodes count on, and how many bins the coordinator cuts from it."""

    max_bins: int = 32            # bins per feature (<= max_bins - 1 edges)
    mantissa_bits: int = 3        # 2**bits grid cells per octave of |x|
    min_exponent: int = -64       # |x| < 2**min_exponent shares the cell of 0 (or of -0)
    max_exponent: int = 64        # |x| >= 2**max_exponent falls in the open end cells

    def __post_init__(self):
        if not 2 <= self.max_bins <= 4096:
            raise LearningError(f"max_bins must be in [2, 4096], got {self.max_bins}")
        if not 0 <= self.mantissa_bits <= 10:
            raise LearningError(f"mantissa_bits must be in [0, 10], got {self.mantissa_bits}")
        if not -126 <= self.min_exponent < self.max_exponent <= 127:
            raise LearningError(f"need -126 <= min_exponent < max_exponent <= 127 (float32 range), "
                                f"got {self.min_exponent}, {self.max_exponent}")

    @property
    def n_cells(self) -> int:
        return grid_boundaries(self).size + 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "BinConfig":
        return cls(**{k: int(v) for k, v in dict(d).items()})


def grid_boundaries(cfg: BinConfig) -> np.ndarray:
    """The sorted grid boundaries (float64, each exact in float32); cell ``c`` is
    ``[b[c-1], b[c])`` with ``b[-1] = -inf`` and ``b[len(b)] = +inf``."""
    m = 2 ** cfg.mantissa_bits
    e = np.arange(cfg.min_exponent, cfg.max_exponent, dtype=np.float64)
    k = np.arange(m, dtype=np.float64)
    mags = (np.exp2(e)[:, None] * (1.0 + k[None, :] / m)).ravel()
    mags = np.concatenate([mags, [np.exp2(float(cfg.max_exponent))]])       # ascending
    return np.concatenate([-mags[::-1], [0.0], mags])


def _check_X(X: np.ndarray, n_features: int | None = None) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2:
        raise LearningError(f"X must be [n, d], got shape {X.shape}")
    if n_features is not None and X.shape[1] != n_features:
        raise LearningError(f"X has {X.shape[1]} features, the bins were agreed for {n_features}")
    X = X.astype(np.float32, copy=False).astype(np.float64)   # the values the nodes hold (float32)
    if not np.all(np.isfinite(X)):
        raise LearningError("X contains NaN or inf; fill missing values (NaN -> 0) first")
    return X + 0.0                                             # -0.0 -> +0.0


def grid_cells(X: np.ndarray, cfg: BinConfig) -> np.ndarray:
    """Grid cell of every value: int64 [n, d]."""
    X = _check_X(X)
    return np.searchsorted(grid_boundaries(cfg), X, side="right").astype(np.int64)


def bin_statistics(X: np.ndarray, cfg: BinConfig) -> np.ndarray:
    """One node's update for the bins round: rows per (feature, grid cell), float32 [d * n_cells].

    Counts are integers (exact in float32 up to 2**24 rows per node)."""
    cells = grid_cells(X, cfg)
    n, d = cells.shape
    C = cfg.n_cells
    if n >= 2 ** 24:
        raise LearningError(f"{n} rows: counts above 2**24 are not exact in float32; split the node")
    flat = (np.arange(d, dtype=np.int64)[None, :] * C + cells).ravel()
    return np.bincount(flat, minlength=d * C).astype(np.float32)


def check_bin_statistics(vec: np.ndarray, n_features: int, n_rows: int, cfg: BinConfig) -> list[str]:
    """Problems with a node's bins-round update (empty list = plausible): shape, non-negative
    integer counts, every feature counting exactly the node's committed ``n_rows`` rows."""
    vec = np.asarray(vec)
    C = cfg.n_cells
    if vec.shape != (n_features * C,):
        return [f"bins update has shape {vec.shape}, expected ({n_features * C},)"]
    v = vec.astype(np.float64)
    if not np.all(np.isfinite(v)) or np.any(v < 0) or np.any(v != np.round(v)):
        return ["bins update holds negative, non-integer or non-finite counts"]
    per_feature = v.reshape(n_features, C).sum(1)
    bad = np.flatnonzero(per_feature != n_rows)
    if bad.size:
        return [f"feature {int(bad[0])} counts {int(per_feature[bad[0]])} rows, the node committed {n_rows}"]
    return []


def sum_counts(vectors: Sequence[np.ndarray]) -> np.ndarray:
    """Exact sum of integer-valued update vectors (float64; order-independent for counts < 2**53)."""
    if len(vectors) == 0:
        raise LearningError("no updates to sum; wait for at least one node")
    acc = np.zeros(np.asarray(vectors[0]).shape, dtype=np.float64)
    for v in vectors:
        v = np.asarray(v, dtype=np.float64)
        if v.shape != acc.shape:
            raise LearningError(f"update has shape {v.shape}, expected {acc.shape}")
        acc += v
    return acc


# --- edges from merged counts ----------------------------------------------------------------

def _feature_edges(counts: np.ndarray, max_bins: int) -> list[int]:
    """Indices into the grid boundaries of one feature's edges (ascending)."""
    nz = np.flatnonzero(counts)
    if nz.size <= 1:
        return []

    def cut(a: int, b: int) -> int:           # boundary between non-empty cells a < b
        return (a + b - 1) // 2               # boundaries a .. b-1 all separate them

    if nz.size <= max_bins:
        return [cut(int(a), int(b)) for a, b in zip(nz[:-1], nz[1:])]
    cum = np.cumsum(counts.astype(np.int64))
    total = int(cum[-1])
    out, prev, left = [], 0, max_bins
    while left > 1:
        target = prev + -(-(total - prev) // left)            # ceil: equal shares of what is left
        c = int(np.searchsorted(cum, target, side="left"))    # first cell reaching the target
        if cum[c] >= total:
            break
        nxt = int(nz[np.searchsorted(nz, c, side="right")])   # next non-empty cell
        out.append(cut(c, nxt))
        prev, left = int(cum[c]), left - 1
    return out


def edges_from_counts(counts: np.ndarray, n_features: int, cfg: BinConfig) -> list[np.ndarray]:
    """Per feature, the bin edges (float64 values, exact in float32, ascending) from the merged
    counts ``[d * n_cells]``; a row with value ``x`` is in bin ``#(edges <= x)``."""
    C = cfg.n_cells
    counts = np.asarray(counts, dtype=np.float64)
    if counts.shape != (n_features * C,):
        raise LearningError(f"counts have shape {counts.shape}, expected ({n_features * C},)")
    b = grid_boundaries(cfg)
    M = counts.reshape(n_features, C).astype(np.int64)
    return [b[np.asarray(_feature_edges(M[j], cfg.max_bins), dtype=np.int64)] for j in range(n_features)]


def data_range(counts: np.ndarray, n_features: int, cfg: BinConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per feature, the lower bound of the first and the upper bound of the last non-empty cell
    (float64; a feature whose values sit in one cell gets that cell's bounds; open end cells are
    bounded by +-2**max_exponent)."""
    C = cfg.n_cells
    b = grid_boundaries(cfg)
    lo_b = np.concatenate([[b[0]], b])             # lower bound of cell c (cell 0 clamped)
    hi_b = np.concatenate([b, [b[-1]]])            # upper bound of cell c (last cell clamped)
    M = np.asarray(counts, dtype=np.float64).reshape(n_features, C)
    lo, hi = np.zeros(n_features), np.zeros(n_features)
    for j in range(n_features):
        nz = np.flatnonzero(M[j])
        if nz.size:
            lo[j], hi[j] = lo_b[nz[0]], hi_b[nz[-1]]
    return lo, hi


def apply_bins(X: np.ndarray, edges: Sequence[np.ndarray]) -> np.ndarray:
    """Bin index of every value, int32 [n, d] (``#(edges_j <= x)``)."""
    X = _check_X(X, len(edges))
    out = np.empty(X.shape, dtype=np.int32)
    for j, e in enumerate(edges):
        out[:, j] = np.searchsorted(np.asarray(e, dtype=np.float64), X[:, j], side="right")
    return out


# --- piecewise-linear encoding ---------------------------------------------------------------

def _slog(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


@dataclass(frozen=True)
class PLEncoder:
    """``transform(X)`` -> float32 ``[n, width]``: each feature's bins as PLE components.

    ``edges[j]`` are feature j's inner edges, ``lo[j]``/``hi[j]`` its outer bounds (raw values);
    a feature with ``k`` inner edges contributes ``k + 1`` components (0 for a constant feature).
    """

    edges: tuple[tuple[float, ...], ...]
    lo: tuple[float, ...]
    hi: tuple[float, ...]

    @classmethod
    def from_counts(cls, counts: np.ndarray, n_features: int, cfg: BinConfig) -> "PLEncoder":
        """The encoder the coordinator agrees from the summed :func:`bin_statistics` updates."""
        edges = edges_from_counts(counts, n_features, cfg)
        lo, hi = data_range(counts, n_features, cfg)
        return cls(tuple(tuple(float(v) for v in e) for e in edges),
                   tuple(float(v) for v in lo), tuple(float(v) for v in hi))

    @property
    def n_features(self) -> int:
        return len(self.edges)

    @property
    def width(self) -> int:
        return sum(len(e) + 1 for e in self.edges if len(e) > 0)

    def transform(self, X: np.ndarray) -> np.ndarray:
        X = _check_X(X, self.n_features)
        cols = []
        for j, e in enumerate(self.edges):
            if not e:
                continue                                   # constant at grid resolution: no signal
            b = _slog(np.asarray((self.lo[j],) + e + (self.hi[j],), dtype=np.float64))   # [T + 1]
            u = _slog(X[:, j])[:, None]                                                 # [n, 1]
            width = np.maximum(b[1:] - b[:-1], 1e-12)                                   # [T]
            cols.append(np.clip((u - b[None, :-1]) / width[None, :], 0.0, 1.0))
        if not cols:
            raise LearningError("every feature is constant at grid resolution: nothing to encode")
        return np.concatenate(cols, axis=1).astype(np.float32)

    def to_dict(self) -> dict:
        return {"edges": [list(e) for e in self.edges], "lo": list(self.lo), "hi": list(self.hi)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "PLEncoder":
        try:
            out = cls(tuple(tuple(float(v) for v in e) for e in d["edges"]),
                      tuple(float(v) for v in d["lo"]), tuple(float(v) for v in d["hi"]))
        except (KeyError, TypeError, ValueError) as e:
            raise LearningError(f"malformed PLE encoder: {e!r}; expected keys edges, lo, hi") from e
        if not len(out.edges) == len(out.lo) == len(out.hi):
            raise LearningError("malformed PLE encoder: edges, lo and hi differ in length")
        for j, e in enumerate(out.edges):
            if list(e) != sorted(set(e)) or (e and not out.lo[j] <= e[0] <= e[-1] <= out.hi[j]):
                raise LearningError(f"malformed PLE encoder: feature {j}'s edges are not strictly "
                                    "increasing inside [lo, hi]")
        return out
