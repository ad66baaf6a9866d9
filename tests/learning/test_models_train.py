"""Models, local training, evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import make_classification

from chainfl.errors import LearningError
from chainfl.learning.evaluate import choose_threshold, evaluate, metrics_from_scores, predict_scores
from chainfl.learning.models import (ModelConfig, build_model, expected_shapes, flatten, get_state,
                                     set_state, unflatten)
from chainfl.learning.train import TrainConfig, resolve_pos_weight, train_local


@pytest.fixture(scope="module")
def data():
    X, y = make_classification(1200, 12, n_informative=6, weights=[0.8], random_state=0)
    return X.astype(np.float32), y


def test_state_roundtrip_and_shapes():
    cfg = ModelConfig(hidden=(8, 4))
    state = get_state(build_model(cfg, 5, seed=1))
    assert list(state) == ["net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias",
                           "net.4.weight", "net.4.bias"]
    assert state["net.0.weight"].shape == (8, 5) and state["net.0.weight"].dtype == np.float32
    vec = flatten(state)
    assert vec.shape == (8 * 5 + 8 + 4 * 8 + 4 + 4 + 1,)
    back = unflatten(vec, expected_shapes(cfg, 5))
    assert all(np.array_equal(back[k], state[k]) for k in state)
    model = build_model(cfg, 5, seed=2)
    set_state(model, back)
    assert flatten(get_state(model)).tobytes() == vec.tobytes()


def test_build_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = flatten(get_state(build_model(ModelConfig(), 7, seed=0)))
    after = torch.rand(1)
    assert torch.equal(before, after)
    assert a.tobytes() == flatten(get_state(build_model(ModelConfig(), 7, seed=0))).tobytes()
    assert a.tobytes() != flatten(get_state(build_model(ModelConfig(), 7, seed=1))).tobytes()


def test_logreg_is_one_linear_layer():
    state = get_state(build_model(ModelConfig(kind="logreg"), 9))
    assert {k: v.shape for k, v in state.items()} == {"net.0.weight": (1, 9), "net.0.bias": (1,)}


def test_mismatches_are_clear_errors():
    with pytest.raises(LearningError, match="unknown model kind"):
        ModelConfig(kind="transformer")
    with pytest.raises(LearningError, match="different ModelConfig"):
        set_state(build_model(ModelConfig(), 4), get_state(build_model(ModelConfig(kind="logreg"), 4)))
    with pytest.raises(LearningError, match="feature count"):
        set_state(build_model(ModelConfig(), 4), get_state(build_model(ModelConfig(), 5)))
    with pytest.raises(LearningError, match="different architecture"):
        unflatten(np.zeros(3, np.float32), expected_shapes(ModelConfig(), 4))
    with pytest.raises(LearningError, match="NaN"):
        train_local(ModelConfig(), None, np.array([[np.nan]], np.float32), np.array([1]))
    with pytest.raises(LearningError, match="unknown optimizer"):
        TrainConfig(optimizer="lbfgs")


def test_config_dicts_roundtrip():
    m = ModelConfig(hidden=(16,), dropout=0.1)
    assert ModelConfig.from_dict(m.to_dict()) == m
    t = TrainConfig(epochs=2, prox_mu=0.01, pos_weight=3.0)
    assert TrainConfig.from_dict(t.to_dict()) == t


def test_training_is_deterministic_by_seed(data):
    X, y = data
    cfg = ModelConfig(dropout=0.2)
    a = train_local(cfg, None, X, y, TrainConfig(epochs=2, seed=5))
    b = train_local(cfg, None, X, y, TrainConfig(epochs=2, seed=5))
    c = train_local(cfg, None, X, y, TrainConfig(epochs=2, seed=6))
    assert flatten(a.state).tobytes() == flatten(b.state).tobytes()
    assert flatten(a.state).tobytes() != flatten(c.state).tobytes()
    assert a.n_samples == 1200 and a.loss == b.loss


def test_training_learns(data):
    X, y = data
    cfg = ModelConfig()
    start = get_state(build_model(cfg, X.shape[1], 0))
    before = evaluate(cfg, start, X[1000:], y[1000:])
    res = train_local(cfg, start, X[:1000], y[:1000], TrainConfig(epochs=10))
    after = evaluate(cfg, res.state, X[1000:], y[1000:])
    assert after["roc_auc"] > 0.9 > before["roc_auc"]
    assert after["f1"] > 0.75


def test_fedprox_keeps_weights_closer_to_start(data):
    X, y = data
    cfg = ModelConfig()
    start = get_state(build_model(cfg, X.shape[1], 0))
    s0 = flatten(start)
    plain = flatten(train_local(cfg, start, X, y, TrainConfig(epochs=3, lr=1e-2)).state)
    prox = flatten(train_local(cfg, start, X, y, TrainConfig(epochs=3, lr=1e-2, prox_mu=1.0)).state)
    assert np.linalg.norm(prox - s0) < 0.9 * np.linalg.norm(plain - s0)


def test_pos_weight():
    y = np.array([0] * 90 + [1] * 10)
    assert resolve_pos_weight(y, "auto") == 9.0
    assert resolve_pos_weight(np.zeros(5), "auto") == 1.0
    assert resolve_pos_weight(np.array([0] * 999 + [1]), "auto", cap=50) == 50.0
    assert resolve_pos_weight(y, 2.5) == 2.5


def test_metrics_hand_computed():
    y = np.array([0, 0, 0, 1, 1, 1])
    s = np.array([0.1, 0.6, 0.2, 0.7, 0.4, 0.9])
    m = metrics_from_scores(s, y, 0.5)
    # predictions 0,1,0,1,0,1 -> tp 2, fp 1, fn 1, tn 2
    assert m["confusion"] == [[2, 1], [1, 2]]
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["roc_auc"] == pytest.approx(8 / 9)
    one_class = metrics_from_scores(s[:3], y[:3])
    assert np.isnan(one_class["roc_auc"]) and one_class["f1"] == 0.0


def test_choose_threshold_maximises_validation_f1():
    y = np.array([0, 0, 0, 0, 1, 1, 1])
    s = np.array([0.05, 0.1, 0.3, 0.35, 0.32, 0.8, 0.9])
    t = choose_threshold(s, y)
    # best F1: flag >= 0.32 (tp 3, fp 1 -> F1 0.857) vs >= 0.8 (tp 2 -> 0.8)
    assert 0.3 < t <= 0.32
    assert metrics_from_scores(s, y, t)["f1"] == pytest.approx(6 / 7)
    assert choose_threshold(s, np.zeros(7)) == 0.5


def test_predict_scores_are_probabilities(data):
    X, y = data
    cfg = ModelConfig(kind="logreg")
    p = predict_scores(cfg, get_state(build_model(cfg, X.shape[1])), X[:50])
    assert p.shape == (50,) and np.all((p > 0) & (p < 1))


def test_a_diverged_model_is_a_clear_error_not_nan_scores():
    cfg = ModelConfig(hidden=(4,))
    state = get_state(build_model(cfg, 3, 0))
    X = np.ones((5, 3), np.float32)
    assert np.isfinite(predict_scores(cfg, state, X)).all()
    first = next(k for k, v in state.items() if v.ndim == 2)
    huge = dict(state)
    huge[first] = np.full_like(state[first], 3e38)        # finite weights, hidden units overflow to inf
    out = [k for k, v in state.items() if v.ndim == 2][-1]
    huge[out] = np.array([[1, -1, 1, -1]], np.float32)     # inf - inf = NaN at the output
    with pytest.raises(LearningError, match="no finite score for 5 of 5 rows .* diverged"):
        predict_scores(cfg, huge, X)
