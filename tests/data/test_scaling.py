"""Federated scaling: merged per-node statistics give the pooled scaler; JSON round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from chainfl.data import FeatureStats, Scaler, partition, signed_log1p
from chainfl.errors import DataError


def _heavy(n=500, d=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.lognormal(0, 6, size=(n, d))          # heavy tails, values up to ~1e10
    X[:, -1] -= X[:, -1].mean()                  # one signed column
    return X


def test_signed_log1p_values():
    np.testing.assert_allclose(signed_log1p(np.array([0.0, 1.0, -1.0, 1e12])),
                               [0.0, np.log(2), -np.log(2), np.log1p(1e12)])


def test_hand_computed_scaler():
    X = np.array([[0.0, 1.0], [np.e - 1, 3.0]])
    s = Scaler.fit(X, ["a", "b"], log=["a"])
    np.testing.assert_allclose(s.mean, [0.5, 2.0])
    np.testing.assert_allclose(s.std, [0.5, 1.0])
    np.testing.assert_allclose(s.transform(X), [[-1, -1], [1, 1]], atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 1000), nodes=st.integers(1, 9))
def test_merged_stats_equal_pooled(seed, nodes):
    X = _heavy(seed=seed)
    names = ["a", "b", "c", "d"]
    parts = partition(np.zeros(len(X)), nodes, "quantity", alpha=0.5, seed=seed)
    merged = Scaler.federated([FeatureStats.compute(X[p], names) for p in parts])
    pooled = Scaler.fit(X, names)
    np.testing.assert_allclose(merged.mean, pooled.mean, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(merged.std, pooled.std, rtol=1e-12)
    assert merged.count == pooled.count == len(X)


def test_transformed_columns_are_standard():
    X = _heavy(2000)
    Z = Scaler.fit(X, list("abcd")).transform(X)
    assert Z.dtype == np.float32
    np.testing.assert_allclose(Z.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(Z.std(axis=0), 1, atol=1e-4)
    assert np.abs(Z).max() < 10


def test_constant_column_maps_to_zero():
    X = np.column_stack([np.full(5, 7.0), np.arange(5.0)])
    Z = Scaler.fit(X, ["c", "x"]).transform(X)
    np.testing.assert_array_equal(Z[:, 0], 0)


def test_json_round_trip():
    X = _heavy()
    s = Scaler.fit(X, list("abcd"), log=["a", "b"])
    t = Scaler.from_dict(json.loads(json.dumps(s.to_dict())))
    assert t == s
    np.testing.assert_array_equal(t.transform(X), s.transform(X))
    stats = FeatureStats.compute(X, list("abcd"))
    assert FeatureStats.from_dict(json.loads(json.dumps(stats.to_dict()))) == stats


def test_errors():
    X = _heavy()
    a = FeatureStats.compute(X, list("abcd"))
    b = FeatureStats.compute(X, list("abce"))
    with pytest.raises(DataError, match="different columns"):
        FeatureStats.merge([a, b])
    with pytest.raises(DataError, match="at least one node"):
        FeatureStats.merge([])
    with pytest.raises(DataError, match="malformed scaler"):
        Scaler.from_dict({"mean": [0]})
    with pytest.raises(DataError, match="not features"):
        Scaler.fit(X, list("abcd"), log=["z"])
    with pytest.raises(DataError, match="NaN"):
        Scaler.fit(np.array([[np.nan]]), ["a"])
