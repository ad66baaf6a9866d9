"""Aggregation rules: pure numpy over lists of 1-D float32 vectors.

Every rule is **deterministic and order-independent**: the inputs are first put in a canonical
order (by ``keys`` when given, e.g. update digests, else by each vector's bytes, ties broken by
weight), reduced in float64, and cast to float32 once. The same updates in any order therefore give
bit-identical output bytes, which is what lets an auditor recompute an aggregate from chain history.

Adding a rule = one function here + one entry in :data:`RULES`.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from chainfl.errors import LearningError


def _stack(updates: Sequence[np.ndarray]) -> np.ndarray:
    if len(updates) == 0:
        raise LearningError("no updates to aggregate; wait for at least one submission")
    arrs = [np.asarray(u) for u in updates]
    shape = arrs[0].shape
    for i, a in enumerate(arrs):
        if a.ndim != 1:
            raise LearningError(f"update {i} has shape {a.shape}; rules take flat 1-D vectors "
                                "(use learning.models.flatten)")
        if a.shape != shape:
            raise LearningError(f"update {i} has {a.size} values, update 0 has {arrs[0].size}: "
                                "updates come from different model architectures")
        if not np.all(np.isfinite(a)):
            raise LearningError(f"update {i} contains NaN or inf; screen or drop it before aggregating")
    # "+ 0.0" turns -0.0 into +0.0: equal values must have equal bytes, or sorting them (median,
    # trimmed mean) could return either zero depending on the input order
    return np.stack([a.astype(np.float32, copy=False) for a in arrs]) + np.float32(0.0)


def canonical_order(updates: Sequence[np.ndarray], keys: Sequence | None = None,
                    weights: Sequence[float] | None = None) -> list[int]:
    """Indices that sort the updates canonically: by key, else by (vector bytes, weight)."""
    n = len(updates)
    if keys is not None:
        if len(keys) != n:
            raise LearningError(f"{len(keys)} keys for {n} updates")
        ks = [bytes(k) if isinstance(k, (bytes, bytearray)) else str(k).encode() for k in keys]
        if len(set(ks)) != n:
            raise LearningError("duplicate keys: each update needs its own digest")
        return sorted(range(n), key=lambda i: ks[i])
    vb = [(np.asarray(u, dtype=np.float32) + np.float32(0.0)).tobytes() for u in updates]
    w = list(weights) if weights is not None else [0.0] * n
    return sorted(range(n), key=lambda i: (vb[i], float(w[i])))


def _canonical(updates, keys=None, weights=None):
    order = canonical_order(updates, keys, weights)
    U = _stack([updates[i] for i in order])
    W = None if weights is None else np.asarray([weights[i] for i in order], dtype=np.float64)
    return U, W, order


def fedavg(updates: Sequence[np.ndarray], weights: Sequence[float] | None = None,
           keys: Sequence | None = None) -> np.ndarray:
    """Weighted mean (FedAvg: weights = sample counts; None = equal weights)."""
    if weights is not None and len(weights) != len(updates):
        raise LearningError(f"{len(weights)} weights for {len(updates)} updates")
    U, W, _ = _canonical(updates, keys, weights)
    if W is None:
        W = np.ones(U.shape[0], dtype=np.float64)
    if np.any(W < 0) or not np.all(np.isfinite(W)) or W.sum() <= 0:
        raise LearningError(f"weights must be finite, >= 0 and not all zero, got {W.tolist()}")
    acc = np.zeros(U.shape[1], dtype=np.float64)
    for w, u in zip(W, U):              # fixed (canonical) accumulation order
        acc += w * u.astype(np.float64)
    return (acc / W.sum()).astype(np.float32)


def mean(updates: Sequence[np.ndarray], keys: Sequence | None = None) -> np.ndarray:
    """Unweighted mean."""
    return fedavg(updates, None, keys)


def median(updates: Sequence[np.ndarray], keys: Sequence | None = None) -> np.ndarray:
    """Coordinate-wise median (mean of the two middle values for an even count)."""
    U, _, _ = _canonical(updates, keys)
    return np.median(U.astype(np.float64), axis=0).astype(np.float32)


def trimmed_mean(updates: Sequence[np.ndarray], beta: float = 0.1,
                 keys: Sequence | None = None) -> np.ndarray:
    """Coordinate-wise mean after dropping the ``floor(beta * n)`` smallest and largest values."""
    if not 0.0 <= beta < 0.5:
        raise LearningError(f"trimmed_mean beta must be in [0, 0.5), got {beta}")
    U, _, _ = _canonical(updates, keys)
    n = U.shape[0]
    k = int(np.floor(beta * n))
    S = np.sort(U.astype(np.float64), axis=0)[k:n - k]
    acc = np.zeros(U.shape[1], dtype=np.float64)
    for row in S:                       # sorted per coordinate, so the order is canonical
        acc += row
    return (acc / S.shape[0]).astype(np.float32)


def _pairwise_sq(U: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances [n, n] in float64, computed row by row (exact, symmetric)."""
    X = U.astype(np.float64)
    n = X.shape[0]
    D = np.zeros((n, n), dtype=np.float64)
    for i in range(n):
        diff = X[i + 1:] - X[i]
        D[i, i + 1:] = np.einsum("ij,ij->i", diff, diff)
    return D + D.T


def krum_scores(updates: Sequence[np.ndarray], f: int, keys: Sequence | None = None,
                weights: Sequence[float] | None = None) -> np.ndarray:
    """Krum score of each update (in the caller's order): sum of squared distances to its
    ``n - f - 2`` nearest neighbours. Lower = more central."""
    n = len(updates)
    if f < 0 or n - f - 2 < 1:
        raise LearningError(f"Krum needs n - f - 2 >= 1 (n={n}, f={f}); lower f or wait for more updates")
    U, _, order = _canonical(updates, keys, weights)
    D = _pairwise_sq(U)
    m = n - f - 2
    scores_c = np.array([np.sum(np.sort(np.delete(D[i], i))[:m]) for i in range(n)])
    scores = np.empty(n, dtype=np.float64)
    scores[order] = scores_c
    return scores


def multi_krum_select(updates: Sequence[np.ndarray], f: int, m: int | None = None,
                      keys: Sequence | None = None, weights: Sequence[float] | None = None) -> list[int]:
    """Indices (caller's order, ascending) of the ``m`` updates with the lowest Krum scores;
    ties go to the canonically smaller update (by key, else by bytes then weight).
    ``m`` None = ``n - f``."""
    n = len(updates)
    m = n - f if m is None else int(m)
    if not 1 <= m <= n:
        raise LearningError(f"multi-Krum m must be in [1, {n}], got {m}")
    scores = krum_scores(updates, f, keys, weights)
    rank = {i: r for r, i in enumerate(canonical_order(updates, keys, weights))}
    chosen = sorted(range(n), key=lambda i: (scores[i], rank[i]))[:m]
    return sorted(chosen)


def krum(updates: Sequence[np.ndarray], f: int, keys: Sequence | None = None) -> np.ndarray:
    """The single update with the lowest Krum score (Blanchard et al., 2017)."""
    i = multi_krum_select(updates, f, 1, keys)[0]
    return np.asarray(updates[i], dtype=np.float32) + np.float32(0.0)   # a copy, -0.0 -> +0.0


def multi_krum(updates: Sequence[np.ndarray], f: int, m: int | None = None,
               weights: Sequence[float] | None = None, keys: Sequence | None = None) -> np.ndarray:
    """(Weighted) mean of the ``m`` most central updates by Krum score."""
    idx = multi_krum_select(updates, f, m, keys, weights)
    return fedavg([updates[i] for i in idx], None if weights is None else [weights[i] for i in idx],
                  None if keys is None else [keys[i] for i in idx])


def clip_norm(update: np.ndarray, reference: np.ndarray, max_norm: float) -> np.ndarray:
    """``reference + delta * min(1, max_norm / ||delta||)`` with ``delta = update - reference``."""
    if not max_norm > 0:
        raise LearningError(f"max_norm must be positive, got {max_norm}")
    u = np.asarray(update, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if u.shape != r.shape:
        raise LearningError(f"update shape {u.shape} differs from reference shape {r.shape}")
    delta = u - r
    norm = float(np.sqrt(np.dot(delta, delta)))
    scale = 1.0 if norm <= max_norm else max_norm / norm
    return (r + delta * scale).astype(np.float32)


#: name -> rule taking (updates, weights, keys, **params); the uniform call used by strategies.
RULES: dict[str, Callable[..., np.ndarray]] = {
    "fedavg": lambda u, w, k, **p: fedavg(u, w, k),
    "mean": lambda u, w, k, **p: mean(u, k),
    "median": lambda u, w, k, **p: median(u, k),
    "trimmed-mean": lambda u, w, k, beta=0.1, **p: trimmed_mean(u, beta, k),
    "krum": lambda u, w, k, f=1, **p: krum(u, f, k),
    "multi-krum": lambda u, w, k, f=1, m=None, **p: multi_krum(u, f, m, w, k),
}
