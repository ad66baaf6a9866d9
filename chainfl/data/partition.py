"""Split sample indices among federated nodes: iid, label skew, quantity skew, or contiguous blocks.

Pure and reproducible: the same ``(y, n_nodes, scheme, alpha, seed, order)`` always gives the same
partition. Every scheme returns one sorted ``int64`` index array per node, the arrays are disjoint
and together cover every sample, and every node gets at least one sample (``n_nodes <= len(y)``
is required).

Schemes:

* ``iid`` — a seeded shuffle cut into near-equal parts.
* ``dirichlet`` — label skew: for each class, node shares ~ Dirichlet(alpha); small ``alpha``
  (0.1) gives nodes dominated by one class, large ``alpha`` (100) approaches iid.
* ``quantity`` — size skew: node sizes ~ Dirichlet(alpha) over a seeded shuffle (labels mixed).
* ``blocks`` — sort by ``order`` (e.g. the block an account was first seen in; ties by index)
  and cut into contiguous near-equal slices: node k holds the k-th era of the chain.
"""

from __future__ import annotations

import numpy as np

from chainfl.errors import ConfigError, DataError

SCHEMES = ("iid", "dirichlet", "quantity", "blocks")


def partition(y, n_nodes: int, scheme: str = "iid", alpha: float = 0.5, seed: int = 0,
              order=None) -> list[np.ndarray]:
    """Indices of the samples held by each of ``n_nodes`` nodes (see the module docstring)."""
    y = np.asarray(y)
    n = len(y)
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown partition scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    if not isinstance(n_nodes, (int, np.integer)) or n_nodes < 1:
        raise ConfigError(f"n_nodes must be a positive integer, got {n_nodes!r}")
    if n_nodes > n:
        raise DataError(f"cannot give each of {n_nodes} nodes a sample: only {n} samples; "
                        f"use at most {n} nodes or more data")
    if scheme in ("dirichlet", "quantity") and not alpha > 0:
        raise ConfigError(f"alpha must be > 0 for the {scheme} scheme, got {alpha!r}")
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        parts = np.array_split(rng.permutation(n), n_nodes)
    elif scheme == "quantity":
        shares = rng.dirichlet(np.full(n_nodes, float(alpha)))
        parts = _cut(rng.permutation(n), shares)
    elif scheme == "dirichlet":
        parts = _label_skew(y, n_nodes, float(alpha), rng)
    else:
        if order is None:
            raise ConfigError("the blocks scheme needs order=<one sort key per sample>, e.g. first-seen block")
        order = np.asarray(order)
        if order.shape != (n,):
            raise DataError(f"order has shape {order.shape}, expected ({n},): one key per sample")
        parts = np.array_split(np.lexsort((np.arange(n), order)), n_nodes)
    parts = _ensure_nonempty([np.asarray(p, dtype=np.int64) for p in parts])
    return [np.sort(p) for p in parts]


def _cut(indices: np.ndarray, shares: np.ndarray) -> list[np.ndarray]:
    bounds = np.round(np.cumsum(shares) * len(indices)).astype(np.int64)
    bounds[-1] = len(indices)
    return np.split(indices, bounds[:-1])


def _label_skew(y: np.ndarray, n_nodes: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    buckets: list[list[np.ndarray]] = [[] for _ in range(n_nodes)]
    for cls in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == cls))
        shares = rng.dirichlet(np.full(n_nodes, alpha))
        for k, piece in enumerate(_cut(members, shares)):
            buckets[k].append(piece)
    return [np.concatenate(b) if b else np.empty(0, np.int64) for b in buckets]


def _ensure_nonempty(parts: list[np.ndarray]) -> list[np.ndarray]:
    """Move one sample from the largest part to each empty part (deterministic)."""
    parts = list(parts)
    for k in range(len(parts)):
        if len(parts[k]) == 0:
            donor = max(range(len(parts)), key=lambda j: (len(parts[j]), -j))
            parts[k] = parts[donor][-1:]
            parts[donor] = parts[donor][:-1]
    return parts


def summary(parts: list[np.ndarray], y) -> list[dict]:
    """One row per node: ``node``, ``samples``, ``positives``, ``positive_rate``."""
    y = np.asarray(y)
    rows = []
    for k, idx in enumerate(parts):
        pos = int(y[idx].sum()) if len(idx) else 0
        rows.append({"node": k, "samples": int(len(idx)), "positives": pos,
                     "positive_rate": round(pos / len(idx), 4) if len(idx) else 0.0})
    return rows


def format_summary(parts: list[np.ndarray], y) -> str:
    """The per-node counts as a plain-text table (for logs and the CLI)."""
    rows = summary(parts, y)
    lines = [f"{'node':>4} {'samples':>8} {'positives':>9} {'rate':>6}"]
    lines += [f"{r['node']:>4} {r['samples']:>8} {r['positives']:>9} {r['positive_rate']:>6.3f}" for r in rows]
    total = sum(r["samples"] for r in rows)
    pos = sum(r["positives"] for r in rows)
    lines.append(f"{'all':>4} {total:>8} {pos:>9} {pos / total if total else 0:>6.3f}")
    return "\n".join(lines)
