"""Validation gate and chained training."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_classification

from chainfl.aggregation.attacks import AttackConfig
from chainfl.errors import LearningError
from chainfl.learning.chained import NodeData, ValidationGate, class_balanced_weights, run_chained
from chainfl.learning.evaluate import evaluate
from chainfl.learning.models import ModelConfig, flatten
from chainfl.learning.train import TrainConfig


@pytest.fixture(scope="module")
def nodes_and_test():
    X, y = make_classification(2600, 10, n_informative=5, weights=[0.8], random_state=1)
    X = X.astype(np.float32)
    nodes = [NodeData(X[i * 200:i * 200 + 150], y[i * 200:i * 200 + 150],
                      X[i * 200 + 150:i * 200 + 200], y[i * 200 + 150:i * 200 + 200]) for i in range(10)]
    return nodes, X[2000:], y[2000:]


def scores(losses, y):
    return {"losses": np.asarray(losses, float), "weights": class_balanced_weights(np.asarray(y))}


def test_class_balanced_weights():
    w = class_balanced_weights(np.array([0, 0, 0, 1]))
    np.testing.assert_allclose(w, [1 / 6, 1 / 6, 1 / 6, 1 / 2])
    np.testing.assert_allclose(class_balanced_weights(np.array([0, 0])), [0.5, 0.5])


def test_gate_rejects_clearly_worse_and_accepts_noise():
    gate = ValidationGate(tolerance=0.02, z=2.0)
    y = np.array([0] * 30 + [1] * 10)
    base = np.full(40, 0.3)
    rng = np.random.default_rng(0)
    ok, _ = gate.check(scores(base + rng.normal(0, 0.01, 40), y), scores(base, y))
    assert ok
    bad, reason = gate.check(scores(base + 1.0, y), scores(base, y))
    assert not bad and "loss rose" in reason
    # one noisy sample's large change is within the SE on a small slice
    one = base.copy()
    one[0] += 0.5
    ok, _ = gate.check(scores(one, y), scores(base, y))
    assert ok


def test_gate_step_check_needs_history():
    gate = ValidationGate(max_step_ratio=3.0, min_history=3)
    y = np.array([0, 1])
    s = scores([0.1, 0.1], y)
    assert gate.check(s, s, step=100.0, step_history=[1.0, 1.0])[0]          # too little history
    ok, reason = gate.check(s, s, step=100.0, step_history=[1.0, 1.2, 0.9])
    assert not ok and "median accepted step" in reason
    assert gate.check(s, s, step=2.0, step_history=[1.0, 1.2, 0.9])[0]


def test_chained_is_deterministic(nodes_and_test):
    nodes, _, _ = nodes_and_test
    cfg = ModelConfig(hidden=(16,))
    a = run_chained(cfg, TrainConfig(seed=3), nodes[:4], 2, gate=ValidationGate())
    b = run_chained(cfg, TrainConfig(seed=3), nodes[:4], 2, gate=ValidationGate())
    assert flatten(a.state).tobytes() == flatten(b.state).tobytes()
    assert len(a.history) == 8 and a.history == b.history


def test_gate_stops_boosted_poisoners(nodes_and_test):
    nodes, Xt, yt = nodes_and_test
    cfg, tcfg = ModelConfig(hidden=(16,)), TrainConfig()
    attack = AttackConfig("boosted", factor=10)
    clean = run_chained(cfg, tcfg, nodes, 3, gate=ValidationGate())
    naive = run_chained(cfg, tcfg, nodes, 3, gate=None, malicious=[4, 7], attack=attack)
    # (from the 4th hand-off on the step check has history; earlier ones rely on the loss test)
    gated = run_chained(cfg, tcfg, nodes, 3, gate=ValidationGate(), malicious=[4, 7], attack=attack)
    c = gated.counts()
    assert c["malicious_rejected"] == 6 and c["honest_rejected"] <= 2
    f1 = {k: evaluate(cfg, r.state, Xt, yt)["f1"] for k, r in
          {"clean": clean, "naive": naive, "gated": gated}.items()}
    assert f1["gated"] > f1["naive"] + 0.05
    assert f1["gated"] > f1["clean"] - 0.03


def test_run_chained_errors(nodes_and_test):
    with pytest.raises(LearningError, match="at least one node"):
        run_chained(ModelConfig(), TrainConfig(), [], 1)
    with pytest.raises(LearningError, match="rounds"):
        run_chained(ModelConfig(), TrainConfig(), nodes_and_test[0], 0)
