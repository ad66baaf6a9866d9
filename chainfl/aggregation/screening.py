"""Update screening: score each update against the robust centre (or its nearest neighbours), flag outliers.

For updates ``u_i`` (flat model vectors) and the round's global model ``reference``:

* ``norm``      ``||u_i - reference||``              (how far the node moved the model)
* ``distance``  ``||u_i - centre||``                 (centre = coordinate-wise median of the u_i)
* ``cosine``    ``cos(u_i - reference, centre - reference)``   (does it move the same way?)

Each score becomes a robust z-score ``(x - median) / (1.4826 * MAD)`` over the round. An update is
flagged when its norm or distance z-score exceeds ``z_max`` **and** the value is at least
``min_ratio`` times the round's median (so a round of near-identical honest updates, where the MAD
is tiny, does not flag the slightly-different ones), or when its cosine is below ``min_cosine``
**and** its norm is at least ``min_ratio`` times the median norm. (Under label skew honest nodes
holding one class routinely point away from the centre - measured: a cosine-only rule flagged 28 %
of honest updates on the real data - but they do not also move the model unusually far.)
Pure and deterministic: same updates in any order -> same flags (reported in the caller's order).

``method="neighbours"`` (used by the ``screened-fedavg`` strategy) scores isolation instead:

* ``neighbour`` the mean distance from ``u_i - reference`` to its ``k_neighbours`` nearest other
  deltas, divided by the round's median of that score (the *neighbour ratio*).

An update is flagged when its neighbour ratio exceeds ``max_ratio``, or when its delta norm is more
than ``norm_ratio_max`` times the round's median norm (so that colluders sending near-identical
boosted vectors, who are each other's neighbours, are still caught), with at most
``max(1, floor(max_flag_frac * n))`` flags per round (kept: highest ``max(neighbour ratio, norm ratio)``;
the centre method ranks by ``max(z_norm, z_distance)``). Why: under label skew
the honest updates are not one cloud around a centre but several (a handful of nodes holding
almost only the positive class move the model in their own direction, together), so distance to a
single centre keeps flagging that minority; an update scaled up by an attacker is instead far from
*every* other update. Measured on the real data (50 nodes, Dirichlet 0.5, 20 % of the nodes
attacking, 30 rounds, 3 seeds; benchmarks/results/experiments_attacks.md): the screened-fedavg runs
caught 99.0 % of boosted model-replacement updates (flipped-label training, step x10) with 0.2 % of
honest updates flagged, and flagged 4.4 % of honest updates in clean runs (the 20 % cap of
``NEIGHBOUR_SCREEN``; its trade-off is documented there). An *amplified* honest update (step x10,
no poisoning) is caught 86 % of the time: the ones it misses come from nodes whose
honest step is tiny (e.g. a node holding only the class the model already gets right), so ten
times it is still an ordinary step - and, pointing the honest way, harmless (FedAvg's F1 does not
drop under it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from chainfl.aggregation.rules import _pairwise_sq, _stack, canonical_order
from chainfl.errors import LearningError

MAD_SCALE = 1.4826  # MAD of a normal distribution -> its standard deviation
SCREEN_METHODS = ("centre", "neighbours")


@dataclass(frozen=True)
class ScreenConfig:
    """When an update counts as an outlier."""

    z_max: float = 3.5          # robust z-score above which norm/distance is suspicious
    min_ratio: float = 1.5      # ... and only if it is this many times the round's median
    min_cosine: float = -0.2    # cosine to the centre's direction below this (with a large norm)
    min_updates: int = 4        # fewer updates than this: no statistics, nothing flagged
    size_exponent: float = 0.0  # norms are compared as norm / n_samples**size_exponent (0 = raw)
    method: str = "centre"      # "centre" (z-scores above) or "neighbours" (isolation, see module doc)
    k_neighbours: int = 2       # neighbours: how many nearest other deltas the score averages over
    max_ratio: float = 3.0      # neighbours: flag above this many times the round's median score
    norm_ratio_max: float = 10.0  # neighbours: also flag a delta norm above this x the median norm
    max_flag_frac: float = 0.0  # >0: flag at most max(1, floor(max_flag_frac * n)) per round

    def __post_init__(self):
        if self.method not in SCREEN_METHODS:
            raise LearningError(f"screening method must be one of {SCREEN_METHODS}, got {self.method!r}")
        if self.k_neighbours < 1:
            raise LearningError(f"k_neighbours must be >= 1, got {self.k_neighbours}")
        if not 0.0 <= self.max_flag_frac <= 1.0:
            raise LearningError(f"max_flag_frac must be in [0, 1], got {self.max_flag_frac}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ScreenResult:
    flagged: list[bool]                          # per update, caller's order
    scores: list[dict]                           # per update: norm, distance, cosine, z-scores, reasons
    centre: np.ndarray | None = field(default=None, repr=False)

    @property
    def n_flagged(self) -> int:
        return int(sum(self.flagged))


def robust_z(x: np.ndarray) -> np.ndarray:
    """``(x - median) / (1.4826 * MAD)``; a zero MAD gives 0 where x == median and +-inf elsewhere."""
    x = np.asarray(x, dtype=np.float64)
    med = np.median(x)
    mad = MAD_SCALE * np.median(np.abs(x - med))
    dev = x - med
    if mad > 0:
        return dev / mad
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(dev == 0, 0.0, np.sign(dev) * np.inf)


def screen(updates: Sequence[np.ndarray], reference: np.ndarray | None = None,
           config: ScreenConfig = ScreenConfig(), keys: Sequence | None = None,
           n_samples: Sequence[int] | None = None) -> ScreenResult:
    """Score every update and flag the outliers (see the module docstring).

    ``n_samples`` (claimed training rows per update) is used only when
    ``config.size_exponent`` > 0: nodes that trained on more rows take more optimiser steps and
    legitimately move further, so norms are compared per ``n_samples ** size_exponent``.
    """
    n = len(updates)
    order = canonical_order(updates, keys)
    U = _stack([updates[i] for i in order]).astype(np.float64)        # [n, p] canonical order
    centre = np.median(U, axis=0)                                     # [p]
    ref = centre if reference is None else np.asarray(reference, dtype=np.float64)
    if ref.shape != centre.shape:
        raise LearningError(f"reference has {ref.size} values, updates have {centre.size}")
    deltas = U - ref
    norm = np.sqrt(np.einsum("ij,ij->i", deltas, deltas))
    if config.size_exponent and n_samples is not None:
        if len(n_samples) != n:
            raise LearningError(f"{len(n_samples)} sample counts for {n} updates")
        sizes = np.array([max(float(n_samples[i]), 1.0) for i in order])
        norm = norm / sizes ** config.size_exponent
    diff = U - centre
    dist = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    cdir = centre - ref
    cnorm = float(np.sqrt(cdir @ cdir))
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.where((norm > 0) & (cnorm > 0), deltas @ cdir / (norm * cnorm), 1.0)

    flagged_c = np.zeros(n, dtype=bool)
    reasons_c: list[list[str]] = [[] for _ in range(n)]
    zn = robust_z(norm) if n >= config.min_updates else np.zeros(n)
    zd = robust_z(dist) if n >= config.min_updates else np.zeros(n)
    nbr = np.zeros(n)                  # neighbour ratio (method "neighbours")
    priority = np.zeros(n)             # who is flagged first when max_flag_frac caps the flags
    if n >= config.min_updates and config.method == "neighbours":
        k = min(config.k_neighbours, n - 1)
        D = np.sqrt(np.maximum(_pairwise_sq(deltas), 0.0))
        near = np.array([np.sort(np.delete(D[i], i))[:k].mean() for i in range(n)])
        med_near, med_n = float(np.median(near)), float(np.median(norm))
        nbr = near / med_near if med_near > 0 else np.where(near > 0, np.inf, 0.0)
        nrat = norm / med_n if med_n > 0 else np.where(norm > 0, np.inf, 0.0)
        for i in range(n):
            if nbr[i] > config.max_ratio:
                reasons_c[i].append(f"{nbr[i]:.1f}x the median distance to its {k} nearest updates")
            if nrat[i] > config.norm_ratio_max:
                reasons_c[i].append(f"norm {norm[i]:.4g} is {nrat[i]:.1f}x the median")
            flagged_c[i] = bool(reasons_c[i])
        priority = np.maximum(nbr, nrat)
    elif n >= config.min_updates:
        priority = np.maximum(zn, zd)
        med_n, med_d = np.median(norm), np.median(dist)
        for i in range(n):
            if zn[i] > config.z_max and norm[i] >= config.min_ratio * med_n:
                reasons_c[i].append(f"norm {norm[i]:.4g} is {norm[i] / max(med_n, 1e-300):.1f}x the median")
            if zd[i] > config.z_max and dist[i] >= config.min_ratio * med_d:
                reasons_c[i].append(f"distance to centre {dist[i]:.4g} (z={zd[i]:.1f})")
            if cos[i] < config.min_cosine and norm[i] >= config.min_ratio * med_n:
                reasons_c[i].append(f"cosine to the centre's direction {cos[i]:.2f}")
            flagged_c[i] = bool(reasons_c[i])
    if config.max_flag_frac > 0:
        cap = max(1, int(np.floor(config.max_flag_frac * n)))     # a 4-node round may still flag one
        ranked = sorted(np.flatnonzero(flagged_c).tolist(), key=lambda c: (-priority[c], c))
        for c in ranked[cap:]:                     # canonical index c breaks ties
            flagged_c[c] = False
            reasons_c[c].append(f"not flagged: at most {cap} flags per round (max_flag_frac)")

    flagged = [False] * n
    scores: list[dict] = [{} for _ in range(n)]
    for c, i in enumerate(order):
        flagged[i] = bool(flagged_c[c])
        scores[i] = {"norm": float(norm[c]), "distance": float(dist[c]), "cosine": float(cos[c]),
                     "z_norm": float(zn[c]), "z_distance": float(zd[c]),
                     "neighbour_ratio": float(nbr[c]), "reasons": reasons_c[c]}
    return ScreenResult(flagged=flagged, scores=scores, centre=centre.astype(np.float32))
