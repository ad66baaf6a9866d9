"""train_many (vectorised) runs the same algorithm as train_local per node."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_classification

from chainfl.errors import LearningError
from chainfl.learning.batched import train_many
from chainfl.learning.models import ModelConfig, build_model, flatten, get_state
from chainfl.learning.train import TrainConfig, train_local


@pytest.fixture(scope="module")
def node_data():
    X, y = make_classification(700, 9, n_informative=5, weights=[0.75], random_state=2)
    X = X.astype(np.float32)
    cuts = [0, 30, 130, 131, 400, 700]          # unequal sizes, one node with a single row
    return [(X[a:b], y[a:b]) for a, b in zip(cuts, cuts[1:])]


@pytest.mark.parametrize("cfg", [
    TrainConfig(),
    TrainConfig(epochs=3, batch_size=32, prox_mu=0.1, weight_decay=1e-3, pos_weight=2.0),
    TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9, epochs=2),
], ids=["adam", "adam-prox-wd", "sgd-momentum"])
@pytest.mark.parametrize("kind", ["mlp", "logreg"])
def test_matches_train_local(node_data, cfg, kind):
    model_cfg = ModelConfig(kind=kind, hidden=(16, 8))
    start = get_state(build_model(model_cfg, 9, seed=4))
    seeds = [11, 12, 13, 14, 15]
    many = train_many(model_cfg, start, node_data, cfg, seeds)
    for (X, y), seed, got in zip(node_data, seeds, many):
        want = train_local(model_cfg, start, X, y, TrainConfig(**{**cfg.to_dict(), "seed": seed}))
        np.testing.assert_allclose(flatten(got.state), flatten(want.state), atol=2e-4, rtol=1e-4)
        assert got.n_samples == want.n_samples
        assert got.loss == pytest.approx(want.loss, rel=1e-4, abs=1e-6)
        # the result really moved (a no-op would also "match" a no-op)
        assert not np.allclose(flatten(got.state), flatten(start))


def test_per_node_starting_states_and_errors(node_data):
    model_cfg = ModelConfig(hidden=(4,))
    states = [get_state(build_model(model_cfg, 9, seed=i)) for i in range(5)]
    many = train_many(model_cfg, states, node_data, TrainConfig(), [0] * 5)
    one = train_local(model_cfg, states[3], *node_data[3], TrainConfig(seed=0))
    np.testing.assert_allclose(flatten(many[3].state), flatten(one.state), atol=2e-4)
    with pytest.raises(LearningError, match="dropout"):
        train_many(ModelConfig(dropout=0.1), states[0], node_data, TrainConfig(), [0] * 5)
    with pytest.raises(LearningError, match="seeds"):
        train_many(model_cfg, states[0], node_data, TrainConfig(), [0])
