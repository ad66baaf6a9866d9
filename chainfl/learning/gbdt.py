"""Histogram-based horizontal federated gradient boosting, exact and bit-deterministic.

The nodes never send rows or trees; each round they send **histograms** over bins everyone
agreed on, the coordinator sums them and grows the trees level by level. Because the sums are of
integers, the trees equal pooled training on the same bins **exactly**, whatever the partition
(the approach of NVFlare's / XGBoost's horizontal histogram-based federated mode, here with
fixed-point gradients so the equality is bit for bit).

Rounds (every round is an ordinary federated round: one flat float32 vector per node, an exact
sum, a deterministic coordinator step):

* **round 0, bins**: a node sends its rows per (feature, grid cell) and its label counts
  (:func:`chainfl.learning.encoding.bin_statistics` + ``[n_rows, n_pos]``); the coordinator cuts
  ``max_bins`` quantile bins per feature from the merged counts and sets the base score to the
  pooled log-odds.
* **then one round per tree level**: for every open tree node ("slot") of the level being grown,
  every feature and every bin, a node sends the sums of the logistic loss's gradient ``p - y``,
  hessian ``p (1 - p)`` and row count over its rows. The coordinator picks each slot's split
  (XGBoost's gain with ``reg_lambda``, ``min_child_weight``; ties go to the lowest feature, then
  the lowest bin) and sets the children's Newton values ``-lr * G / (H + lambda)`` from the
  cumulative sums — so the leaves of the last level need no extra round: a tree of depth ``D``
  costs ``D`` rounds, ``n_trees`` trees ``n_trees * D + 1`` rounds in all.
* ``concurrent_trees`` K > 1 grows up to K trees at once, staggered: a new tree starts every
  round while fewer than K grow, so with K = depth one tree finishes per round and ``n_trees``
  trees take ``n_trees + depth`` rounds instead of ``n_trees * depth + 1``. A tree's gradients are
  taken, once, when it starts, at the ensemble it can see then: the finished trees plus each
  tree still growing *truncated at the depth it has reached* (its deepest decided nodes' values;
  recomputable from the state, which records every tree's start round). This is delayed-gradient
  boosting; K = 1 is exact sequential boosting (every earlier tree is finished).

Fixed point: a node sends ``rint(g * 2**grad_bits)`` and ``rint(h * 2**(grad_bits + 2))``
(``|g| < 1``, ``h <= 1/4``) and counts, all integers, exact in float32 while a node has fewer
than ``2**(24 - grad_bits)`` rows (16,384 at the default 10 bits) and in the float64 sum up to
2**53. Hence order independence and federated == pooled by construction, and exact validity
bounds (:func:`check_update`) that every honest update meets: integer values, counts >= 0,
``|G| <= count * 2**grad_bits``, ``0 <= H <= count * 2**grad_bits`` per cell, per-slot totals of
count/G/H identical across features, rows per level <= the node's committed rows. A further check
needs the node's previous update: child totals equal to its parent histogram's cumulative sums at
the split the coordinator chose (:func:`check_consistency`). The round decision does not apply it:
it holds while every round includes the same nodes, but a slot's value is set again from the
included sums when the slot is grown, so once a node is screened out the trees in a concurrent
tree's basis change value and an honest node's gradients for that tree change between its levels.
An attempt to enforce it flagged every honest node of a 12-tree, depth-3, 3-concurrent task in the
round after a flipper was first excluded (ARCHITECTURE.md, known limits).

The model ("state") is a flat dict of float32/int32 arrays whose shapes are fixed by the config
(:func:`state_shapes`), so a safetensors blob of any round has known shapes; the JSON meta is
``GBDTConfig.to_dict()``. Slot ``s`` of a tree has children ``2s + 1`` (bin <= split_bin, left)
and ``2s + 2``; ``feature`` is the split feature or one of UNUSED / LEAF / OPEN.

**Privacy cost.** Histograms are aggregates, but per-bin sums over few rows leak: a cell holding
one of a node's rows reveals that row's gradient, hence (given the public model) its label, and
the counts reveal the node's feature distribution per tree node. The summed histograms and the
trees leak the same about the pooled data. Use it where the nodes accept sharing such per-bin
aggregates; secure aggregation of the vectors (sums only) would hide per-node values but not the
validity checks, which need them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Mapping, Sequence

import numpy as np

from chainfl.errors import LearningError
from chainfl.learning.encoding import (BinConfig, apply_bins, bin_statistics, check_bin_statistics,
                                       edges_from_counts)

UNUSED, LEAF, OPEN = -2, -1, -3           # codes in ``feature`` besides a split feature index
PHASE_BINS, PHASE_GROW, PHASE_DONE = 0, 1, 2


@dataclass(frozen=True)
class GBDTConfig:
    """Boosting settings; travels with the model (the blob's JSON meta)."""

    n_features: int                       # input columns
    n_trees: int = 20                     # trees in the finished ensemble
    depth: int = 6                        # levels per tree = rounds per tree (leaves at depth `depth`)
    learning_rate: float = 0.3            # shrinkage of every Newton value
    reg_lambda: float = 1.0               # L2 on leaf values (XGBoost's lambda)
    min_child_weight: float = 1.0         # hessian sum a child needs
    min_split_gain: float = 0.0           # a split must gain more than this (XGBoost's gamma)
    concurrent_trees: int = 1             # trees grown at once (1 = exact sequential boosting)
    grad_bits: int = 10                   # fixed-point bits of the gradient (hessian: +2)
    bins: BinConfig = field(default_factory=BinConfig)   # the grid and bins per feature

    def __post_init__(self):
        if isinstance(self.bins, Mapping):
            object.__setattr__(self, "bins", BinConfig.from_dict(self.bins))
        if self.n_features < 1 or self.n_trees < 1 or not 1 <= self.depth <= 12:
            raise LearningError(f"need n_features >= 1, n_trees >= 1, 1 <= depth <= 12; got "
                                f"{self.n_features}, {self.n_trees}, {self.depth}")
        if not self.learning_rate > 0 or self.reg_lambda < 0 or self.min_child_weight < 0:
            raise LearningError("learning_rate must be > 0, reg_lambda and min_child_weight >= 0")
        if self.reg_lambda == 0 and self.min_child_weight == 0:
            raise LearningError("reg_lambda = min_child_weight = 0 allows leaves with H = 0 "
                                "(infinite values); set one of them > 0")
        if not 1 <= self.concurrent_trees <= self.n_trees:
            raise LearningError(f"concurrent_trees must be in [1, n_trees], got {self.concurrent_trees}")
        if not 1 <= self.grad_bits <= 20:
            raise LearningError(f"grad_bits must be in [1, 20], got {self.grad_bits}")

    @property
    def slots(self) -> int:
        """Tree-node slots per tree (a full binary tree of ``depth`` levels of splits)."""
        return 2 ** (self.depth + 1) - 1

    @property
    def max_rows_per_node(self) -> int:
        """Rows a node may hold for its sums to stay exact in float32."""
        return 2 ** (24 - self.grad_bits) - 1

    def rounds(self) -> int:
        """Rounds to the finished ensemble when no tree stops early (bins round included)."""
        return 1 + _pipeline_rounds(self.n_trees, self.depth, self.concurrent_trees)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["bins"] = self.bins.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "GBDTConfig":
        d = dict(d)
        d["bins"] = BinConfig.from_dict(d.get("bins", {}))
        return cls(**d)


def _pipeline_rounds(T: int, D: int, K: int) -> int:
    """Growing rounds with K concurrent trees of full depth D (simulates the scheduler)."""
    level = [-1] * T
    rounds = 0
    _next_tree(level, K, D)
    while any(lv < D for lv in level):
        rounds += 1
        level = [lv + 1 if 0 <= lv < D else lv for lv in level]
        _next_tree(level, K, D)
    return rounds


def _next_tree(level, K: int, D: int) -> int | None:
    """Start the next tree if fewer than K grow (one new tree per round); its index or None."""
    growing = sum(1 for lv in level if 0 <= lv < D)
    if growing >= K or -1 not in level:
        return None
    t = level.index(-1)
    level[t] = 0
    return t


# --- the state --------------------------------------------------------------------------------

def state_shapes(cfg: GBDTConfig) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Name -> (shape, dtype) of every array of a state: fixed by the config."""
    T, M, d, B = cfg.n_trees, cfg.slots, cfg.n_features, cfg.bins.max_bins
    f32, i32 = np.dtype(np.float32), np.dtype(np.int32)
    return {"phase": ((1,), i32), "round": ((1,), i32), "base_score": ((1,), f32),
            "edges": ((d, B - 1), f32), "n_edges": ((d,), i32),
            "tree_level": ((T,), i32), "tree_start": ((T,), i32),
            "feature": ((T, M), i32), "split_bin": ((T, M), i32), "value": ((T, M), f32),
            "gain": ((T, M), f32), "cover": ((T, M), f32), "count": ((T, M), i32)}


def init_state(cfg: GBDTConfig) -> dict[str, np.ndarray]:
    """The state before the bins round (the task's initial model)."""
    s = {k: np.zeros(shape, dtype) for k, (shape, dtype) in state_shapes(cfg).items()}
    s["feature"][:] = UNUSED
    s["tree_level"][:] = -1
    s["tree_start"][:] = -1
    s["phase"][0] = PHASE_BINS
    return s


def check_state(cfg: GBDTConfig, state: Mapping[str, np.ndarray]) -> None:
    """Raise unless ``state`` has exactly the config's arrays, shapes and dtypes."""
    want = state_shapes(cfg)
    if set(state) != set(want):
        raise LearningError(f"GBDT state has arrays {sorted(state)}, the config needs {sorted(want)}")
    for k, (shape, dtype) in want.items():
        a = np.asarray(state[k])
        if a.shape != shape or a.dtype != dtype:
            raise LearningError(f"GBDT state array {k!r} is {a.dtype}{a.shape}, expected {dtype}{shape}")


def _copy(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.array(v, copy=True) for k, v in state.items()}


def edges_of(state: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """The agreed bin edges per feature (float64 values)."""
    return [np.asarray(state["edges"][j, :int(n)], dtype=np.float64)
            for j, n in enumerate(state["n_edges"])]


def phase(state: Mapping[str, np.ndarray]) -> str:
    return {PHASE_BINS: "bins", PHASE_GROW: "grow", PHASE_DONE: "done"}[int(state["phase"][0])]


def blocks(cfg: GBDTConfig, state: Mapping[str, np.ndarray]) -> list[tuple[int, int]]:
    """``(tree, level)`` of every histogram block the next update holds, in update order."""
    if phase(state) != "grow":
        return []
    return [(t, int(lv)) for t, lv in enumerate(state["tree_level"]) if 0 <= lv < cfg.depth]


def _bin_offsets(state) -> tuple[np.ndarray, int]:
    nb = np.asarray(state["n_edges"], dtype=np.int64) + 1       # bins per feature
    off = np.concatenate([[0], np.cumsum(nb)[:-1]])
    return off, int(nb.sum())


def update_size(cfg: GBDTConfig, state: Mapping[str, np.ndarray]) -> int:
    """Length of the float32 vector a node sends next (fixed by the state, not the data)."""
    p = phase(state)
    if p == "bins":
        return cfg.n_features * cfg.bins.n_cells + 2
    if p == "done":
        return 0
    _, TB = _bin_offsets(state)
    return sum(2 ** lv for _, lv in blocks(cfg, state)) * TB * 3


def max_update_size(cfg: GBDTConfig) -> int:
    """An upper bound on :func:`update_size` over every round of the config (the blob cap): the
    bins round, or ``concurrent_trees`` trees at the deepest levels with every bin of every feature."""
    grow = sum(2 ** (cfg.depth - 1 - k) for k in range(min(cfg.concurrent_trees, cfg.depth))) \
        * cfg.n_features * cfg.bins.max_bins * 3
    return max(cfg.n_features * cfg.bins.n_cells + 2, grow)


# --- node side --------------------------------------------------------------------------------

def _route(state, t: int, Xb: np.ndarray, max_depth: int | None = None) -> np.ndarray:
    """Slot each row reaches in tree ``t`` following decided splits (stops at LEAF/OPEN, or
    after ``max_depth`` splits)."""
    feat, sb = state["feature"][t], state["split_bin"][t]
    idx = np.zeros(Xb.shape[0], dtype=np.int64)
    rows = np.arange(Xb.shape[0])
    levels = int(np.log2(feat.size + 1)) if max_depth is None else int(max_depth)
    for _ in range(levels):
        f = feat[idx]
        inner = f >= 0
        if not inner.any():
            break
        right = Xb[rows, np.maximum(f, 0)] > sb[idx]
        idx = np.where(inner, 2 * idx + 1 + right, idx)
    return idx


def _margins(cfg: GBDTConfig, state, Xb: np.ndarray, trees, depths=None, cache=None) -> np.ndarray:
    """Base score + the given trees' values (tree ``trees[i]`` truncated at ``depths[i]``)."""
    out = np.full(Xb.shape[0], float(state["base_score"][0]), dtype=np.float64)
    for i, t in enumerate(trees):
        dep = None if depths is None else depths[i]
        key = (t, dep)
        if cache is not None and key in cache:
            out += cache[key]
            continue
        v = state["value"][t][_route(state, t, Xb, dep)].astype(np.float64)
        if cache is not None:
            cache[key] = v
        out += v
    return out


def _basis(cfg: GBDTConfig, state, t: int) -> tuple[list[int], list[int]]:
    """The trees (and the depth each is cut at) whose sum tree ``t``'s gradients are taken at:
    every tree started before it, at the depth it had when ``t`` started (all of it when K = 1)."""
    start = state["tree_start"]
    trees = [u for u in range(t) if start[u] >= 0]
    depths = [min(cfg.depth, int(start[t] - start[u])) for u in trees]
    return trees, depths


def node_update(cfg: GBDTConfig, state: Mapping[str, np.ndarray], X: np.ndarray,
                y: np.ndarray) -> np.ndarray:
    """A node's update for the next round: one flat float32 vector (see the module docstring).

    Bins round: ``[d * n_cells]`` grid counts then ``[n_rows, n_pos]``. Growing round: for each
    block of :func:`blocks`, for each of its ``2**level`` slots (heap order), for each feature and
    bin (features in order, ``n_edges + 1`` bins each): ``(G, H, count)`` in fixed point.
    """
    check_state(cfg, state)
    X = np.asarray(X)
    y = np.asarray(y).astype(np.int64)
    if X.ndim != 2 or y.shape != (X.shape[0],) or X.shape[1] != cfg.n_features:
        raise LearningError(f"need X [n, {cfg.n_features}] and y [n]; got {X.shape}, {y.shape}")
    if np.any((y != 0) & (y != 1)):
        raise LearningError("labels must be 0/1")
    if X.shape[0] > cfg.max_rows_per_node:
        raise LearningError(f"{X.shape[0]} rows exceed {cfg.max_rows_per_node}, the most whose "
                            f"fixed-point sums stay exact at grad_bits={cfg.grad_bits}; lower grad_bits")
    p = phase(state)
    if p == "bins":
        stats = bin_statistics(X, cfg.bins)
        return np.concatenate([stats, np.array([X.shape[0], int(y.sum())], np.float32)])
    if p == "done":
        raise LearningError("the ensemble is finished: no more updates")
    Xb = apply_bins(X, edges_of(state))
    off, TB = _bin_offsets(state)
    flat_bins = Xb.astype(np.int64) + off[None, :]                       # [n, d] index within a slot
    d = cfg.n_features
    parts = []
    cache: dict = {}
    for t, lv in blocks(cfg, state):
        # 1. gradients at the ensemble the tree started from (_basis), in fixed point
        F = _margins(cfg, state, Xb, *_basis(cfg, state, t), cache=cache)
        prob = 1.0 / (1.0 + np.exp(-F))
        gq = np.rint((prob - y) * 2.0 ** cfg.grad_bits)
        hq = np.rint(prob * (1.0 - prob) * 2.0 ** (cfg.grad_bits + 2))
        # 2. rows of the level's open slots; histogram [2**lv, TB, 3]
        first = 2 ** lv - 1
        slot = _route(state, t, Xb)
        rel = slot - first
        open_ = (rel >= 0) & (rel < 2 ** lv) & (state["feature"][t][slot] == OPEN)
        r = np.flatnonzero(open_)
        idx = (rel[r, None] * TB + flat_bins[r]).ravel()                  # [n_open * d]
        size = 2 ** lv * TB
        hist = np.zeros((size, 3), dtype=np.float64)
        hist[:, 0] = np.bincount(idx, np.repeat(gq[r], d), minlength=size)
        hist[:, 1] = np.bincount(idx, np.repeat(hq[r], d), minlength=size)
        hist[:, 2] = np.bincount(idx, minlength=size)
        parts.append(hist.ravel())
    return np.concatenate(parts).astype(np.float32)


# --- validity bounds --------------------------------------------------------------------------

def _blocks_view(cfg, state, vec) -> list[tuple[int, int, np.ndarray]]:
    """``(tree, level, hist [2**level, TB, 3])`` per block of an update vector (float64)."""
    _, TB = _bin_offsets(state)
    out, pos = [], 0
    v = np.asarray(vec, dtype=np.float64)
    for t, lv in blocks(cfg, state):
        n = 2 ** lv * TB * 3
        out.append((t, lv, v[pos:pos + n].reshape(2 ** lv, TB, 3)))
        pos += n
    return out


def _per_feature_totals(state, hist: np.ndarray) -> np.ndarray:
    """[slots, d, 3] sums over each feature's bins."""
    off, TB = _bin_offsets(state)
    return np.add.reduceat(hist, off, axis=1) if off.size else np.zeros(hist.shape[:1] + (0, 3))


def check_update(cfg: GBDTConfig, state: Mapping[str, np.ndarray], vec: np.ndarray,
                 n_rows: int) -> list[str]:
    """Problems with a node's update for ``state`` (empty = within the bounds every honest update
    meets exactly); ``n_rows`` is the node's committed row count."""
    vec = np.asarray(vec)
    want = update_size(cfg, state)
    if vec.shape != (want,):
        return [f"update has shape {vec.shape}, expected ({want},) for this round"]
    v = vec.astype(np.float64)
    if not np.all(np.isfinite(v)) or np.any(v != np.rint(v)):
        return ["update holds non-finite or non-integer values (fixed point expected)"]
    if n_rows > cfg.max_rows_per_node:
        return [f"committed {n_rows} rows exceed {cfg.max_rows_per_node} (grad_bits={cfg.grad_bits})"]
    if phase(state) == "bins":
        d, C = cfg.n_features, cfg.bins.n_cells
        out = check_bin_statistics(v[:d * C], d, n_rows, cfg.bins)
        if v[d * C] != n_rows or not 0 <= v[d * C + 1] <= n_rows:
            out.append(f"label counts {v[d * C:].tolist()} do not fit the committed {n_rows} rows")
        return out
    out = []
    scale = 2.0 ** cfg.grad_bits
    for t, lv, h in _blocks_view(cfg, state, v):
        G, H, C = h[..., 0], h[..., 1], h[..., 2]
        where = f"tree {t} level {lv}"
        if np.any(C < 0):
            out.append(f"{where}: negative counts")
        if np.any(np.abs(G) > C * scale):
            out.append(f"{where}: |G| exceeds count x 2**grad_bits (|p - y| < 1)")
        if np.any(H < 0) or np.any(H > C * scale):
            out.append(f"{where}: H outside [0, count x 2**grad_bits] (p(1-p) <= 1/4)")
        tot = _per_feature_totals(state, h)                                  # [slots, d, 3]
        if tot.shape[1] and np.any(tot != tot[:, :1, :]):
            out.append(f"{where}: per-slot totals differ between features (every row is in one bin "
                       "of every feature)")
        rows = float(tot[:, 0, 2].sum()) if tot.shape[1] else 0.0
        if rows > n_rows or (lv == 0 and rows != n_rows):
            out.append(f"{where}: {rows:.0f} rows in open slots, the node committed {n_rows}")
        closed = state["feature"][t][2 ** lv - 1 + np.arange(2 ** lv)] != OPEN
        if np.any(h[closed] != 0):
            out.append(f"{where}: non-zero histogram for a slot that is not open")
    return out


def check_consistency(cfg: GBDTConfig, prev_state: Mapping[str, np.ndarray], prev_vec: np.ndarray,
                      state: Mapping[str, np.ndarray], vec: np.ndarray) -> list[str]:
    """Problems between a node's previous and current update: a child slot's totals must equal
    the node's parent histogram summed over the split's side (same gradients within a tree)."""
    if phase(prev_state) != "grow" or phase(state) != "grow":
        return []
    prev = {(t, lv): h for t, lv, h in _blocks_view(cfg, prev_state, prev_vec)}
    off, _ = _bin_offsets(state)
    nb = np.asarray(state["n_edges"], dtype=np.int64) + 1
    out = []
    for t, lv, h in _blocks_view(cfg, state, vec):
        if lv == 0 or (t, lv - 1) not in prev:
            continue
        ph = prev[(t, lv - 1)]
        tot = _per_feature_totals(state, h)[:, 0, :] if nb.size else np.zeros((h.shape[0], 3))
        for i in range(2 ** lv):
            s = 2 ** lv - 1 + i
            if state["feature"][t][s] != OPEN:
                continue
            parent = (s - 1) // 2
            f, b = int(state["feature"][t][parent]), int(state["split_bin"][t][parent])
            seg = ph[parent - (2 ** (lv - 1) - 1), off[f]:off[f] + nb[f]]    # [bins of f, 3]
            side = seg[:b + 1] if s == 2 * parent + 1 else seg[b + 1:]
            if np.any(side.sum(0) != tot[i]):
                out.append(f"tree {t} slot {s}: totals {tot[i].tolist()} differ from the parent "
                           f"histogram's {side.sum(0).tolist()} at the chosen split")
    return out


# --- coordinator side -------------------------------------------------------------------------

def sum_updates(vectors: Sequence[np.ndarray], keys: Sequence | None = None) -> np.ndarray:
    """The float64 sum of the nodes' vectors, accumulated in canonical order (by ``keys``, e.g.
    update digests, else by bytes). Integer-valued, so exact and order-independent anyway."""
    if len(vectors) == 0:
        raise LearningError("no updates to sum; wait for at least one node")
    if keys is not None and len(keys) != len(vectors):
        raise LearningError(f"{len(keys)} keys for {len(vectors)} updates")
    ks = [bytes(k) if isinstance(k, (bytes, bytearray)) else str(k).encode() for k in keys] \
        if keys is not None else [np.asarray(v, np.float32).tobytes() for v in vectors]
    order = sorted(range(len(vectors)), key=lambda i: ks[i])
    shape = np.asarray(vectors[0]).shape
    acc = np.zeros(shape, dtype=np.float64)
    for i in order:
        v = np.asarray(vectors[i], dtype=np.float64)
        if v.shape != shape:
            raise LearningError(f"update {i} has shape {v.shape}, update 0 has {shape}")
        acc += v
    return acc


def _newton(cfg: GBDTConfig, G: np.ndarray, H: np.ndarray) -> np.ndarray:
    return -cfg.learning_rate * G / (H + cfg.reg_lambda)


def best_splits(cfg: GBDTConfig, state: Mapping[str, np.ndarray], hist: np.ndarray):
    """Best split of every slot of one level's summed histogram ``[slots, TB, 3]`` (real units).

    Returns ``(feature, bin, gain, left [slots, 3], right [slots, 3], total [slots, 3])`` with
    feature -1 where no split is valid or gains more than ``min_split_gain``. Gain:
    ``(GL^2/(HL+l) + GR^2/(HR+l) - G^2/(H+l)) / 2``; ties go to the lowest (feature, bin)."""
    off, TB = _bin_offsets(state)
    nb = np.asarray(state["n_edges"], dtype=np.int64) + 1
    S = hist.shape[0]
    lam, mcw = cfg.reg_lambda, cfg.min_child_weight
    cum = np.cumsum(hist, axis=1)                                          # [S, TB, 3]
    start = np.concatenate([np.zeros((S, 1, 3)), cum], axis=1)[:, off, :]   # [S, d, 3] before f
    total = hist[:, :nb[0], :].sum(1) if nb.size else np.zeros((S, 3))     # [S, 3]
    # candidate split after bin b of feature f: left = cum[off_f + b] - start_f, b < nb_f - 1
    pos = np.concatenate([off[f] + np.arange(nb[f] - 1) for f in range(nb.size)]).astype(np.int64)
    fid = np.concatenate([np.full(nb[f] - 1, f) for f in range(nb.size)]).astype(np.int64)
    bid = np.concatenate([np.arange(nb[f] - 1) for f in range(nb.size)]).astype(np.int64)
    feat = np.full(S, -1, dtype=np.int64)
    sbin = np.zeros(S, dtype=np.int64)
    gain = np.zeros(S)
    left = np.zeros((S, 3))
    if pos.size == 0:
        return feat, sbin, gain, left, total - left, total
    L = cum[:, pos, :] - start[:, fid, :]                                  # [S, P, 3]
    R = total[:, None, :] - L
    GL, HL, GR, HR = L[..., 0], L[..., 1], R[..., 0], R[..., 1]
    Gt, Ht = total[:, 0:1], total[:, 1:2]
    g = 0.5 * (GL * GL / (HL + lam) + GR * GR / (HR + lam) - Gt * Gt / (Ht + lam))
    ok = (HL >= mcw) & (HR >= mcw) & (L[..., 2] >= 1) & (R[..., 2] >= 1)
    g = np.where(ok, g, -np.inf)
    best = np.argmax(g, axis=1)                                            # first max: lowest (f, b)
    bg = g[np.arange(S), best]
    split = np.isfinite(bg) & (bg > cfg.min_split_gain)
    feat = np.where(split, fid[best], -1)
    sbin = np.where(split, bid[best], 0)
    gain = np.where(split, bg, 0.0)
    left = np.where(split[:, None], L[np.arange(S), best], 0.0)
    return feat, sbin, gain, left, total - left, total


def _real_units(cfg: GBDTConfig, hist: np.ndarray) -> np.ndarray:
    out = np.array(hist, dtype=np.float64, copy=True)
    out[..., 0] *= 2.0 ** -cfg.grad_bits
    out[..., 1] *= 2.0 ** -(cfg.grad_bits + 2)
    return out


def coordinator_step(cfg: GBDTConfig, state: Mapping[str, np.ndarray], total: np.ndarray) -> dict[str, np.ndarray]:
    """The next state from the sum of the included nodes' updates (:func:`sum_updates`).

    Deterministic: the same state and sum give the same bytes (an auditor recomputes it)."""
    check_state(cfg, state)
    total = np.asarray(total, dtype=np.float64)
    want = update_size(cfg, state)
    if total.shape != (want,):
        raise LearningError(f"summed update has shape {total.shape}, expected ({want},)")
    s = _copy(state)
    if phase(state) == "bins":
        d, C = cfg.n_features, cfg.bins.n_cells
        edges = edges_from_counts(total[:d * C], d, cfg.bins)
        for j, e in enumerate(edges):
            s["n_edges"][j] = e.size
            s["edges"][j, :e.size] = e.astype(np.float32)
            s["edges"][j, e.size:] = e[-1] if e.size else 0.0
        n, pos = float(total[d * C]), float(total[d * C + 1])
        base = np.log(pos / (n - pos)) if 0 < pos < n else 0.0
        s["base_score"][0] = np.float32(base)
        s["phase"][0] = PHASE_GROW
        s["round"][0] = 1
        _start(cfg, s)
        return s
    if phase(state) == "done":
        raise LearningError("the ensemble is finished: nothing to aggregate")
    s["round"][0] += 1
    for t, lv, h in _blocks_view(cfg, state, total):
        _grow_level(cfg, s, t, lv, _real_units(cfg, h))
    for t in range(cfg.n_trees):                      # finished trees
        lv = int(s["tree_level"][t])
        if 0 <= lv < cfg.depth and not np.any(s["feature"][t] == OPEN):
            s["tree_level"][t] = cfg.depth
    _start(cfg, s)
    if np.all(s["tree_level"] == cfg.depth):
        s["phase"][0] = PHASE_DONE
    return s


def _grow_level(cfg: GBDTConfig, s: dict, t: int, lv: int, hist: np.ndarray) -> None:
    first = 2 ** lv - 1
    feat, sbin, gain, left, right, total = best_splits(cfg, s, hist)
    for i in range(2 ** lv):
        slot = first + i
        if s["feature"][t, slot] != OPEN:
            continue
        s["value"][t, slot] = np.float32(_newton(cfg, total[i, 0], total[i, 1]))
        s["cover"][t, slot] = np.float32(total[i, 1])
        s["count"][t, slot] = int(total[i, 2])
        if feat[i] < 0:
            s["feature"][t, slot] = LEAF
            continue
        s["feature"][t, slot] = int(feat[i])
        s["split_bin"][t, slot] = int(sbin[i])
        s["gain"][t, slot] = np.float32(gain[i])
        for child, side in ((2 * slot + 1, left[i]), (2 * slot + 2, right[i])):
            s["value"][t, child] = np.float32(_newton(cfg, side[0], side[1]))
            s["cover"][t, child] = np.float32(side[1])
            s["count"][t, child] = int(side[2])
            can_split = lv + 1 < cfg.depth and side[1] >= 2 * cfg.min_child_weight and side[2] >= 2
            s["feature"][t, child] = OPEN if can_split else LEAF
    s["tree_level"][t] = lv + 1


def _start(cfg: GBDTConfig, s: dict) -> None:
    t = _next_tree([int(v) for v in s["tree_level"]], cfg.concurrent_trees, cfg.depth)
    if t is not None:
        s["tree_level"][t] = 0
        s["tree_start"][t] = s["round"][0]
        s["feature"][t, 0] = OPEN


# --- pooled reference, prediction, explanations ----------------------------------------------

def fit(cfg: GBDTConfig, parts: Sequence[tuple[np.ndarray, np.ndarray]],
        max_rounds: int | None = None, on_round=None) -> dict[str, np.ndarray]:
    """Run the federated protocol in process over ``parts`` (one ``(X, y)`` per node; one part =
    pooled training). ``on_round(r, state)`` after each round. Returns the final state."""
    state = init_state(cfg)
    r = 0
    while phase(state) != "done" and (max_rounds is None or r < max_rounds):
        total = sum_updates([node_update(cfg, state, X, y) for X, y in parts])
        state = coordinator_step(cfg, state, total)
        r += 1
        if on_round is not None:
            on_round(r, state)
    return state


def finished_trees(cfg: GBDTConfig, state: Mapping[str, np.ndarray]) -> list[int]:
    return [t for t in range(cfg.n_trees) if int(state["tree_level"][t]) == cfg.depth]


def predict_margin(cfg: GBDTConfig, state: Mapping[str, np.ndarray], X: np.ndarray) -> np.ndarray:
    """Log-odds [n] (float64) of the finished trees (the base score before the first tree)."""
    check_state(cfg, state)
    if phase(state) == "bins":
        return np.zeros(np.asarray(X).shape[0])
    Xb = apply_bins(X, edges_of(state))
    return _margins(cfg, state, Xb, finished_trees(cfg, state))


def predict_proba(cfg: GBDTConfig, state: Mapping[str, np.ndarray], X: np.ndarray) -> np.ndarray:
    """Fraud probabilities [n] (float64)."""
    return 1.0 / (1.0 + np.exp(-predict_margin(cfg, state, X)))


def contributions(cfg: GBDTConfig, state: Mapping[str, np.ndarray],
                  X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Saabas path attributions: ``(contrib [n, d], bias [n])`` with
    ``contrib.sum(1) + bias == predict_margin`` (to float rounding). Along each tree's path the
    change of the node value at a split is credited to the split's feature; ``bias`` = base score
    + the roots' values."""
    check_state(cfg, state)
    X = np.asarray(X)
    n = X.shape[0]
    contrib = np.zeros((n, cfg.n_features))
    bias = np.full(n, float(state["base_score"][0]))
    if phase(state) == "bins":
        return contrib, np.zeros(n)
    Xb = apply_bins(X, edges_of(state))
    rows = np.arange(n)
    for t in finished_trees(cfg, state):
        feat, sb, val = state["feature"][t], state["split_bin"][t], state["value"][t].astype(np.float64)
        idx = np.zeros(n, dtype=np.int64)
        bias += val[0]
        for _ in range(cfg.depth):
            f = feat[idx]
            inner = f >= 0
            if not inner.any():
                break
            nxt = np.where(inner, 2 * idx + 1 + (Xb[rows, np.maximum(f, 0)] > sb[idx]), idx)
            np.add.at(contrib, (rows[inner], f[inner]), val[nxt[inner]] - val[idx[inner]])
            idx = nxt
    return contrib, bias


def feature_importance(cfg: GBDTConfig, state: Mapping[str, np.ndarray]) -> np.ndarray:
    """Total split gain per feature over the finished trees [d]."""
    out = np.zeros(cfg.n_features)
    for t in finished_trees(cfg, state):
        f = state["feature"][t]
        m = f >= 0
        np.add.at(out, f[m], state["gain"][t][m].astype(np.float64))
    return out


def with_rounds_budget(cfg: GBDTConfig, rounds: int) -> GBDTConfig:
    """The same settings with as many trees as fit in ``rounds`` (bins round included)."""
    lo, hi = 1, 10_000
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if replace(cfg, n_trees=mid, concurrent_trees=min(cfg.concurrent_trees, mid)).rounds() <= rounds:
            lo = mid
        else:
            hi = mid - 1
    return replace(cfg, n_trees=lo, concurrent_trees=min(cfg.concurrent_trees, lo))


# --- peer validation: what one update alone implies -------------------------------------------

CANDIDATE_MODES = ("own", "share", "loo")


def candidate_values(cfg: GBDTConfig, state: Mapping[str, np.ndarray], tentative: Mapping[str, np.ndarray],
                     vec: np.ndarray, total: np.ndarray | None = None, mode: str = "own") -> np.ndarray:
    """The step one node's update implies, on the round's tentative structure.

    ``tentative`` is :func:`coordinator_step` of ``total``, the sum of *all* submitted updates
    (the split every open slot would get). For each block ``(t, level)`` of the round, a value
    for both children where the tentative state splits a slot and for the slot itself where it
    becomes a leaf. Returns float32 ``[n_blocks, slots]`` (0 elsewhere): the candidate a peer
    scores with :func:`candidate_margins`. A node with no rows in a slot implies 0 there.

    ``mode``: "own" = the Newton values ``-lr * G_j / (H_j + lambda)`` of the candidate's sums
    alone; "share" = its share of the aggregate step, ``-lr * G_j / (H_all + lambda)`` (the
    shares of all nodes add up to the step); "loo" = what it changes in the aggregate step,
    ``step(all) - step(all without j)``."""
    if mode not in CANDIDATE_MODES:
        raise LearningError(f"unknown candidate mode {mode!r}; use one of {CANDIDATE_MODES}")
    if mode != "own" and total is None:
        raise LearningError(f"candidate mode {mode!r} needs total= (the sum of all updates)")
    out = np.zeros((len(blocks(cfg, state)), cfg.slots), dtype=np.float32)
    if phase(state) != "grow":
        return out
    off, _ = _bin_offsets(state)
    nb = np.asarray(state["n_edges"], dtype=np.int64) + 1
    mine = [_real_units(cfg, h) for _, _, h in _blocks_view(cfg, state, vec)]
    alls = mine if total is None else [_real_units(cfg, h) for _, _, h in _blocks_view(cfg, state, total)]
    lam, lr = cfg.reg_lambda, cfg.learning_rate

    def value(side, all_side):
        if mode == "own":
            return _newton(cfg, side[0], side[1])
        if mode == "share":
            return -lr * side[0] / (all_side[1] + lam)
        return _newton(cfg, all_side[0], all_side[1]) - _newton(cfg, all_side[0] - side[0],
                                                                all_side[1] - side[1])

    for k, (t, lv) in enumerate(blocks(cfg, state)):
        h, ha = mine[k], alls[k]
        for i in range(2 ** lv):
            slot = 2 ** lv - 1 + i
            if state["feature"][t][slot] != OPEN:
                continue
            f = int(tentative["feature"][t][slot])
            if f < 0:
                f0 = slice(off[0], off[0] + nb[0]) if nb.size else slice(0, 0)
                out[k, slot] = value(h[i, f0].sum(0), ha[i, f0].sum(0))
                continue
            seg, sega = h[i, off[f]:off[f] + nb[f]], ha[i, off[f]:off[f] + nb[f]]
            b = int(tentative["split_bin"][t][slot])
            out[k, 2 * slot + 1] = value(seg[:b + 1].sum(0), sega[:b + 1].sum(0))
            out[k, 2 * slot + 2] = value(seg[b + 1:].sum(0), sega[b + 1:].sum(0))
    return out


def candidate_margins(cfg: GBDTConfig, state: Mapping[str, np.ndarray], tentative: Mapping[str, np.ndarray],
                      values: Sequence[np.ndarray], X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A peer's view of candidates on its own rows: ``(base [n], candidates [c, n])`` log-odds,
    ``base`` = the finished ensemble (:func:`predict_margin` of ``state``), candidate ``j`` =
    ``base`` + the values ``values[j]`` (:func:`candidate_values`) of the slot each row reaches in
    the tentative trees one level down."""
    base = predict_margin(cfg, state, X)
    vals = np.stack([np.asarray(v, dtype=np.float64) for v in values]) if len(values) else \
        np.zeros((0, len(blocks(cfg, state)), cfg.slots))
    delta = np.zeros((vals.shape[0], base.size))
    if phase(state) != "grow" or not base.size:
        return base, base[None, :] + delta
    Xb = apply_bins(X, edges_of(state))
    for k, (t, lv) in enumerate(blocks(cfg, state)):
        # values sit only at this level's slots and their children: rows that stopped higher
        # up (earlier leaves) gather a 0
        delta += vals[:, k, _route(tentative, t, Xb, lv + 1)]
    return base, base[None, :] + delta


# --- label-consistency screen: the coordinator's check against label flipping -------------------

@dataclass(frozen=True)
class ConsistencyScreen:
    """Exclude an update whose labels disagree with the global model beyond what calibrated
    labels allow (see :func:`label_consistency`)."""

    threshold: float = 1.0          # chi^2 per row above this: excluded (calibrated labels: <= 0.5)
    warmup_rounds: int = 5          # growing rounds aggregated before screening starts (at the
                                    # base score alone every fraud-holding node disagrees)
    max_exclude_frac: float = 0.5   # never exclude more than this share of a round's updates
    min_rows: int = 0               # a node with fewer rows is not screened (specs recorded before
                                    # small_z carry 16: an honest 4-row node scored 1.43 for 74 rounds
                                    # on eth_fraud under the flat threshold; small_z spares it instead)
    size_allowance: float = 0.0     # excluded above threshold + this / sqrt(rows). Measured
                                    # (benchmarks/results/gbdt_defence.md): any allowance > 0 costs
                                    # catches, and at 30 % IID flippers 1.0 lets every one through
                                    # (the screen never starts excluding, the model stays confused)
    small_z: float = 2.5            # > 0: a node's limit is also at least CALIBRATED + small_z / sqrt(rows)
                                    # (a one-sided test against the calibrated mean, per-row sd <= 1):
                                    # small nodes must be clearly inconsistent (4 rows: 1.75), nodes
                                    # of >= (small_z / 0.5)^2 rows (25 at 2.5) see the flat threshold. 0 = off (what specs
                                    # recorded without it mean). Measured against min rows 16 and
                                    # z 2 / 3: benchmarks/results/gbdt_defence_smallz*.md

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "ConsistencyScreen":
        return cls(**{"small_z": 0.0, **dict(d)})


def label_consistency(cfg: GBDTConfig, state: Mapping[str, np.ndarray], vec: np.ndarray) -> float:
    """A node's chi^2 per row: how far its labels disagree with the model its gradients come from.

    Over every cell (block, slot, feature, bin) of the update, ``G^2 / (H + 1/4)`` in real units,
    averaged over the features (each feature's cells partition the node's rows), divided by the
    rows per block. If a node's labels were drawn from the model's own probabilities,
    ``E[G^2] = H`` in every cell, so each row adds at most ``h / (h + 1/4) <= 1/2`` on average
    whatever its probability; a flipped label where the model is confident adds ~3 (p = 0.05:
    ``0.95^2 / (0.05 + 0.25)``). Skewed honest nodes stay near the calibrated bound because trees
    put their rows in cells where the model already agrees with them. Summed with ``math.fsum``
    (correctly rounded), so every machine gets the same float. 0 outside growing rounds."""
    return consistency(cfg, state, vec)[0]


def consistency(cfg: GBDTConfig, state, vec) -> tuple[float, float]:
    """(chi^2 per row, rows) of one update (see :func:`label_consistency`); rows = the most in
    one block (all the node's rows when a tree starts in the round)."""
    import math

    if phase(state) != "grow":
        return 0.0, 0.0
    terms, rows = [], []
    for _, _, h in _blocks_view(cfg, state, vec):
        h = _real_units(cfg, h)
        terms.append((h[..., 0] ** 2 / (h[..., 1] + 0.25)).ravel())
        rows.append(float(h[..., 2].sum()) / cfg.n_features)
    total_rows = math.fsum(rows)
    if total_rows <= 0:
        return 0.0, 0.0
    return math.fsum(math.fsum(t.tolist()) for t in terms) / cfg.n_features / total_rows, max(rows)


#: chi^2 per row of calibrated labels is at most this on average (see :func:`label_consistency`).
CALIBRATED = 0.5


def consistency_limit(screen: "ConsistencyScreen", rows: float) -> float:
    """The chi^2 per row above which an update of ``rows`` rows (per block) is excluded."""
    import math

    if rows <= 0:
        return math.inf
    limit = screen.threshold + screen.size_allowance / math.sqrt(rows)
    if screen.small_z > 0:
        limit = max(limit, CALIBRATED + screen.small_z / math.sqrt(rows))
    return limit


def screen_by_consistency(cfg: GBDTConfig, state: Mapping[str, np.ndarray], vectors: Sequence[np.ndarray],
                          names: Sequence[str], screen: ConsistencyScreen = ConsistencyScreen()):
    """``(excluded names sorted, {name: chi^2 per row})`` for one round's updates. Recomputable
    from the recorded updates and state; independent of the order of the updates. Beyond the cap
    the highest scores are excluded first (ties by name)."""
    if len(set(names)) != len(names) or len(names) != len(vectors):
        raise LearningError("need one unique name per update")
    both = {n: consistency(cfg, state, v) for n, v in zip(names, vectors)}
    scores = {n: both[n][0] for n in names}
    if phase(state) != "grow" or int(state["round"][0]) - 1 < screen.warmup_rounds:
        return [], scores
    above = sorted((n for n in names if both[n][1] >= screen.min_rows
                    and scores[n] > consistency_limit(screen, both[n][1])),
                   key=lambda n: (-scores[n], n))
    cap = int(np.floor(screen.max_exclude_frac * len(names)))
    return sorted(above[:cap]), scores
