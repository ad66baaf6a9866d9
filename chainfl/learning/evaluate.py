"""Scoring and metrics (scikit-learn). The decision threshold is chosen on validation data only.

``evaluate`` returns precision, recall and F1 of the positive (fraud) class at a threshold, plus
threshold-free ROC-AUC and PR-AUC (average precision) and the confusion matrix
``[[tn, fp], [fn, tp]]``. AUCs are ``nan`` when ``y`` holds a single class.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from sklearn.metrics import (average_precision_score, confusion_matrix, precision_recall_curve,
                             precision_recall_fscore_support, roc_auc_score)

from chainfl.errors import LearningError
from chainfl.learning.models import ModelConfig, build_model, set_state


def predict_scores(model_cfg: ModelConfig, state: Mapping[str, np.ndarray], X: np.ndarray) -> np.ndarray:
    """Fraud probabilities [n] (float64) of a model given by config + weights (``X``: the
    model's inputs, :func:`chainfl.learning.models.model_inputs`)."""
    X = np.asarray(X, dtype=np.float32)
    if model_cfg.kind == "gbdt":
        from chainfl.learning import gbdt

        cfg = model_cfg.boosting(X.shape[1])
        return gbdt.predict_proba(cfg, {k: np.asarray(v) for k, v in state.items()}, X)
    if model_cfg.kind == "newton":
        from chainfl.learning import newton

        return newton.predict_proba(model_cfg.newton_settings(X.shape[1]), state, X)
    model = build_model(model_cfg, X.shape[1], 0)
    set_state(model, state)
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(X))          # [n]
    scores = torch.sigmoid(logits.double()).numpy()
    bad = ~np.isfinite(scores)
    if bad.any():
        raise LearningError(f"the model gives no finite score for {int(bad.sum())} of {scores.size} rows "
                            f"(first: row {int(np.flatnonzero(bad)[0])}): its weights have diverged or the "
                            f"input holds NaN/inf; retrain with a lower learning rate or a robust strategy")
    return scores


def predict_logodds(model_cfg: ModelConfig, state: Mapping[str, np.ndarray], X: np.ndarray) -> np.ndarray:
    """Log-odds [n] (float64) of a network (mlp/logreg) on its inputs ``X``, clipped to [-50, 50]
    (a diverged model's non-finite outputs count as maximally wrong: NaN becomes 0)."""
    if model_cfg.kind in ("gbdt", "newton"):
        raise LearningError(f"log-odds of a {model_cfg.kind} model: use its own module")
    model = build_model(model_cfg, np.shape(X)[1], 0)
    set_state(model, state)
    model.eval()
    with torch.no_grad():
        z = model(torch.from_numpy(np.asarray(X, dtype=np.float32))).double().numpy()
    return np.clip(np.nan_to_num(z, nan=0.0), -50.0, 50.0)


def choose_threshold(scores: np.ndarray, y: np.ndarray) -> float:
    """The threshold maximising positive-class F1 on (validation) scores; 0.5 without positives.

    Returns the midpoint between the best cut score and the next lower score, so small numeric
    differences on other data do not flip decisions exactly at the cut.
    """
    scores = np.asarray(scores, dtype=np.float64)
    y = np.asarray(y)
    if y.size == 0 or not np.any(y == 1):
        return 0.5
    precision, recall, thresholds = precision_recall_curve(y, scores)
    p, r = precision[:-1], recall[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    best = int(np.argmax(f1))
    cut = float(thresholds[best])
    lower = scores[scores < cut]
    return float((cut + lower.max()) / 2) if lower.size else cut


def metrics_from_scores(scores: np.ndarray, y: np.ndarray, threshold: float = 0.5) -> dict:
    """Classification metrics of probabilities ``scores`` against labels ``y`` at ``threshold``."""
    scores = np.asarray(scores, dtype=np.float64)
    y = np.asarray(y).astype(int)
    pred = (scores >= threshold).astype(int)
    p, r, f1, _ = precision_recall_fscore_support(y, pred, average="binary", pos_label=1,
                                                  zero_division=0)
    two_classes = np.unique(y).size == 2
    cm = confusion_matrix(y, pred, labels=[0, 1])
    return {
        "precision": float(p), "recall": float(r), "f1": float(f1),
        "roc_auc": float(roc_auc_score(y, scores)) if two_classes else float("nan"),
        "pr_auc": float(average_precision_score(y, scores)) if two_classes else float("nan"),
        "confusion": cm.astype(int).tolist(), "threshold": float(threshold), "n": int(y.size),
    }


def evaluate(model_cfg: ModelConfig, state: Mapping[str, np.ndarray], X: np.ndarray, y: np.ndarray,
             threshold: float | None = None) -> dict:
    """Metrics of a model on (X, y) at ``threshold`` (0.5 when None)."""
    scores = predict_scores(model_cfg, state, X)
    return metrics_from_scores(scores, y, 0.5 if threshold is None else threshold)


def evaluate_with_validation(model_cfg: ModelConfig, state: Mapping[str, np.ndarray],
                             X_val: np.ndarray, y_val: np.ndarray, X_test: np.ndarray,
                             y_test: np.ndarray) -> dict:
    """Test metrics at the threshold that maximises F1 on the validation data."""
    threshold = choose_threshold(predict_scores(model_cfg, state, X_val), y_val)
    return evaluate(model_cfg, state, X_test, y_test, threshold)
