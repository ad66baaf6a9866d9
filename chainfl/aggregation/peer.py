"""Peer validation: every node scores every candidate update on its own validation rows; a robust
statistic of the *other* nodes' scores decides which updates enter the aggregate.

Two pure halves, so the coordinator decides and an auditor re-decides from the recorded reports:

* **reporter side** — :func:`score_candidates` turns the reporter's labels, the global model's
  log-odds on its validation rows (``base``) and each candidate's (``candidates``) into one
  report row per candidate (:data:`REPORT_FIELDS`): the *gain* the candidate brings to the
  global model in ROC-AUC (when the reporter holds both classes) and in mean log-loss over its
  positive and over its negative rows. What a "candidate" is belongs to the model: for FedAvg the
  node's trained model, for the histogram GBDT the step its own histogram implies on the round's
  tentative splits (:func:`chainfl.learning.gbdt.candidate_values`).
* **coordinator side** — :func:`decide` takes the reports ``[reporters, candidates, fields]``
  and, per candidate, the median over the *other* reporters. Medians tolerate a lying minority:
  reporters that invert their scores (or report anything else) move a median only as far as
  the honest reporters' quantiles reach, as long as they are fewer than half of the reporters
  that hold the class in question.

Why gains, why per class: under label skew a node's own trained model is worse than the global
one on most peers (it drifted towards its own class mix), so raw scores flag honest nodes; the
*change* a candidate brings is what separates a poisoned update from a skewed honest one, and
ROC-AUC ignores the shift of all scores that skew causes. Reporters holding only one class
cannot score AUC; the loss gains are then taken per class (median over the reporters holding
that class), so the many negative-only reporters do not outvote the few that hold frauds.

The decision: a candidate is excluded when its robust score is below ``-tolerance x scale``,
``scale`` being the median absolute robust score of the round's candidates (so the rule does
not depend on how large this round's steps are), and at most ``max_exclude_frac`` of the
candidates are excluded (the lowest scores first, ties by canonical id).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

import numpy as np

from chainfl.errors import LearningError

REPORT_FIELDS = ("auc_gain", "has_auc", "pos_gain", "n_pos", "neg_gain", "n_neg")
METRICS = ("auc", "loss", "auc+loss")


def _auc_rows(y: np.ndarray, S: np.ndarray) -> np.ndarray:
    """ROC-AUC of each row of scores ``S [c, n]`` against labels ``y [n]`` (average ranks for ties)."""
    from scipy.stats import rankdata

    pos = y == 1
    P, N = int(pos.sum()), int((~pos).sum())
    ranks = rankdata(S, axis=1, method="average")
    return (ranks[:, pos].sum(1) - P * (P + 1) / 2) / (P * N)


def _logloss(y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Per-row log-loss of log-odds ``z`` (any leading shape) against ``y``, stable."""
    return np.logaddexp(0.0, z) - y * z


def score_candidates(y: np.ndarray, base: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """One reporter's report, float32 ``[c, len(REPORT_FIELDS)]``.

    ``y [n]`` its validation labels (0/1), ``base [n]`` the global model's log-odds on its rows,
    ``candidates [c, n]`` each candidate's. Gains are ``metric(candidate) - metric(base)`` for
    AUC and ``loss(base) - loss(candidate)`` for the mean log-loss (positive = better); fields
    that the reporter cannot measure (a class it does not hold) are 0 with a 0 count."""
    y = np.asarray(y).astype(np.int64)
    base = np.asarray(base, dtype=np.float64)
    C = np.atleast_2d(np.asarray(candidates, dtype=np.float64))
    if base.shape != y.shape or C.shape[1:] != y.shape:
        raise LearningError(f"need y [n], base [n], candidates [c, n]; got {y.shape}, {base.shape}, {C.shape}")
    if not (np.all(np.isfinite(base)) and np.all(np.isfinite(C))):
        raise LearningError("scores must be finite log-odds")
    pos, neg = y == 1, y == 0
    out = np.zeros((C.shape[0], len(REPORT_FIELDS)), dtype=np.float64)
    if pos.any() and neg.any():
        out[:, 0] = _auc_rows(y, C) - _auc_rows(y, base[None, :])[0]
        out[:, 1] = 1.0
    d = _logloss(y, base)[None, :] - _logloss(y[None, :], C)           # [c, n]
    if pos.any():
        out[:, 2] = d[:, pos].mean(1)
    if neg.any():
        out[:, 4] = d[:, neg].mean(1)
    out[:, 3], out[:, 5] = pos.sum(), neg.sum()
    return out.astype(np.float32)


@dataclass(frozen=True)
class PeerConfig:
    """How the coordinator turns score reports into inclusion decisions."""

    metric: str = "auc"              # "auc", "loss" (per-class loss gains) or "auc+loss" (their sum
                                     # after scaling each by its round's median |score|)
    tolerance: float = 1.0           # exclude below -tolerance x the round's median |score|
    max_exclude_frac: float = 0.5    # never exclude more than this share of the candidates
    min_reporters: int = 3           # fewer (per statistic) -> that statistic is 0 (no evidence)

    def __post_init__(self):
        if self.metric not in METRICS:
            raise LearningError(f"unknown peer metric {self.metric!r}; use one of {', '.join(METRICS)}")
        if self.tolerance < 0 or not 0 <= self.max_exclude_frac <= 1 or self.min_reporters < 1:
            raise LearningError("tolerance >= 0, max_exclude_frac in [0, 1], min_reporters >= 1 required")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "PeerConfig":
        return cls(**dict(d))


@dataclass
class PeerDecision:
    included: list[str]                           # candidates that enter the aggregate, sorted
    excluded: list[str]                           # candidates left out, sorted
    scores: dict[str, dict] = field(default_factory=dict)   # candidate -> statistics and reason


def _median_of(values: np.ndarray, mask: np.ndarray, min_n: int) -> float:
    v = values[mask]
    return float(np.median(v)) if v.size >= min_n else 0.0


def robust_scores(reports: np.ndarray, reporters: Sequence[str], candidates: Sequence[str],
                  cfg: PeerConfig) -> dict[str, dict]:
    """Per candidate: the medians over the other reporters (``auc``, ``pos``, ``neg``, their
    reporter counts) and the ``score`` the decision uses (before scaling)."""
    R = np.asarray(reports, dtype=np.float64)
    if R.shape != (len(reporters), len(candidates), len(REPORT_FIELDS)):
        raise LearningError(f"reports have shape {R.shape}, expected ({len(reporters)}, "
                            f"{len(candidates)}, {len(REPORT_FIELDS)})")
    if not np.all(np.isfinite(R)):
        raise LearningError("a score report holds NaN/inf; reject that report before deciding")
    out = {}
    for j, c in enumerate(candidates):
        others = np.array([r != c for r in reporters])
        auc_m = others & (R[:, j, 1] > 0)
        pos_m = others & (R[:, j, 3] > 0)
        neg_m = others & (R[:, j, 5] > 0)
        auc = _median_of(R[:, j, 0], auc_m, cfg.min_reporters)
        pos = _median_of(R[:, j, 2], pos_m, cfg.min_reporters)
        neg = _median_of(R[:, j, 4], neg_m, cfg.min_reporters)
        out[c] = {"auc": auc, "pos": pos, "neg": neg, "loss": 0.5 * (pos + neg),
                  "n_auc": int(auc_m.sum()), "n_pos": int(pos_m.sum()), "n_neg": int(neg_m.sum())}
    return out


def decide(reports: np.ndarray, reporters: Sequence[str], candidates: Sequence[str],
           cfg: PeerConfig = PeerConfig()) -> PeerDecision:
    """Inclusion of every candidate from the reports ``[reporters, candidates, fields]``
    (:func:`score_candidates` rows; a reporter's row about itself is ignored). Deterministic and
    independent of the order of reporters and candidates."""
    if len(set(candidates)) != len(candidates) or len(set(reporters)) != len(reporters):
        raise LearningError("duplicate reporter or candidate ids")
    stats = robust_scores(reports, reporters, candidates, cfg)
    names = sorted(candidates)

    def scaled(key: str) -> dict[str, float]:
        v = np.array([stats[c][key] for c in names])
        scale = float(np.median(np.abs(v)))
        return {c: (stats[c][key] / scale if scale > 0 else 0.0) for c in names}

    if cfg.metric == "auc":
        score = scaled("auc")
    elif cfg.metric == "loss":
        score = scaled("loss")
    else:
        a, b = scaled("auc"), scaled("loss")
        score = {c: a[c] + b[c] for c in names}
    below = [c for c in names if score[c] < -cfg.tolerance * (2.0 if cfg.metric == "auc+loss" else 1.0)]
    cap = int(np.floor(cfg.max_exclude_frac * len(names)))
    ranked = sorted(below, key=lambda c: (score[c], c))
    excluded = set(ranked[:cap])
    for c in names:
        stats[c]["score"] = score[c]
        stats[c]["reason"] = ("excluded: peers' median gain below the tolerance" if c in excluded else
                              "kept: at most max_exclude_frac excluded" if c in below else "kept")
    return PeerDecision(included=[c for c in names if c not in excluded], excluded=sorted(excluded),
                        scores=stats)
