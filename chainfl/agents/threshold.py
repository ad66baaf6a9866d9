"""Choosing the decision threshold without pooling validation data.

Each node scores its own validation slice with the final model and reports only a histogram of
the scores per class (:func:`score_histogram`: counts per bin, nothing per account). The
coordinator sums the histograms (:func:`merge_histograms`) and picks the bin edge that maximises
F1 on the summed counts (:func:`threshold_from_histogram`) — the same F1 a pooled computation
would give at that edge. Bins are uniform in logit space (scores of a trained detector pile up
near 0 and 1), ``N_BINS`` bins over logits [-LOGIT_RANGE, LOGIT_RANGE] plus two open-ended bins.
Pure functions.
"""

from __future__ import annotations

import numpy as np

from chainfl.errors import AgentError

N_BINS = 240
LOGIT_RANGE = 12.0
#: inner bin edges as probabilities (N_BINS + 1 of them), increasing
EDGES = 1.0 / (1.0 + np.exp(-np.linspace(-LOGIT_RANGE, LOGIT_RANGE, N_BINS + 1)))


def score_histogram(scores, y) -> dict:
    """Per-class counts of ``scores`` in the ``N_BINS + 2`` bins (below, inner bins, above)."""
    scores = np.asarray(scores, dtype=np.float64)
    y = np.asarray(y).astype(int)
    if scores.shape != y.shape:
        raise AgentError(f"scores {scores.shape} and labels {y.shape} differ in shape")
    bins = np.searchsorted(EDGES, scores, side="right")        # 0 .. N_BINS + 1
    pos = np.bincount(bins[y == 1], minlength=N_BINS + 2)
    neg = np.bincount(bins[y != 1], minlength=N_BINS + 2)
    return {"bins": N_BINS, "range": LOGIT_RANGE, "pos": pos.astype(int).tolist(),
            "neg": neg.astype(int).tolist()}


#: Largest count a histogram bin may hold (a node's validation rows; far above any real slice).
MAX_COUNT = 2**31 - 1


def valid_histogram(h) -> bool:
    """True if ``h`` is a score histogram as :func:`score_histogram` writes it: this binning and
    ``N_BINS + 2`` non-negative integer counts per class (no floats, no bools, < 2**31)."""
    if not isinstance(h, dict) or h.get("bins") != N_BINS or h.get("range") != LOGIT_RANGE:
        return False
    for key in ("pos", "neg"):
        v = h.get(key)
        if not isinstance(v, list) or len(v) != N_BINS + 2 or \
                not all(type(c) is int and 0 <= c <= MAX_COUNT for c in v):
            return False
    return True


def merge_histograms(histograms) -> dict:
    """Sum several nodes' histograms (all must use the same binning)."""
    histograms = list(histograms)
    if not histograms:
        raise AgentError("no score histograms to merge: no node reported")
    pos = np.zeros(N_BINS + 2, dtype=np.int64)
    neg = np.zeros(N_BINS + 2, dtype=np.int64)
    for h in histograms:
        if h.get("bins") != N_BINS or float(h.get("range", 0)) != LOGIT_RANGE \
                or len(h["pos"]) != N_BINS + 2 or len(h["neg"]) != N_BINS + 2:
            raise AgentError("a node reported a score histogram with different binning; "
                             "all nodes must run the same chainfl version")
        p, n = np.asarray(h["pos"], dtype=np.int64), np.asarray(h["neg"], dtype=np.int64)
        if (p < 0).any() or (n < 0).any():
            raise AgentError("a node reported negative histogram counts")
        pos += p
        neg += n
    return {"bins": N_BINS, "range": LOGIT_RANGE, "pos": pos.tolist(), "neg": neg.tolist()}


def threshold_from_histogram(hist: dict) -> tuple[float, float]:
    """``(threshold, f1)``: the inner bin edge maximising F1 of "score >= threshold" on the
    summed counts; ``(0.5, 0.0)`` when there are no positives."""
    pos = np.asarray(hist["pos"], dtype=np.float64)
    neg = np.asarray(hist["neg"], dtype=np.float64)
    total_pos = pos.sum()
    if total_pos == 0:
        return 0.5, 0.0
    # predicting positive from bin k on: edge EDGES[k - 1] for k = 1 .. N_BINS + 1
    tp = np.cumsum(pos[::-1])[::-1][1:]          # [N_BINS + 1]: positives in bins k..end
    fp = np.cumsum(neg[::-1])[::-1][1:]
    fn = total_pos - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(tp > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
    best = int(np.argmax(f1))                    # first (lowest) edge among equals
    return float(EDGES[best]), float(f1[best])
