"""Partitioning: disjoint cover, non-empty nodes, reproducibility, and the skew each scheme promises."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from chainfl.data import format_summary, partition, summary
from chainfl.errors import ConfigError, DataError


def _labels(n=1000, rate=0.2, seed=1):
    return (np.random.default_rng(seed).random(n) < rate).astype(np.int64)


def _check_cover(parts, n):
    joined = np.concatenate(parts)
    assert len(joined) == n and len(np.unique(joined)) == n
    assert all(len(p) >= 1 for p in parts)
    assert all((np.diff(p) > 0).all() for p in parts)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "quantity", "blocks"])
def test_every_scheme_is_a_reproducible_disjoint_cover(scheme):
    y = _labels()
    order = np.random.default_rng(3).integers(0, 50, len(y))
    a = partition(y, 7, scheme, alpha=0.3, seed=5, order=order)
    b = partition(y, 7, scheme, alpha=0.3, seed=5, order=order)
    _check_cover(a, len(y))
    assert all(np.array_equal(x, z) for x, z in zip(a, b))
    if scheme != "blocks":
        c = partition(y, 7, scheme, alpha=0.3, seed=6, order=order)
        assert not all(np.array_equal(x, z) for x, z in zip(a, c))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 200), nodes=st.integers(1, 30), alpha=st.floats(0.01, 50),
       seed=st.integers(0, 10_000), scheme=st.sampled_from(["iid", "dirichlet", "quantity", "blocks"]))
def test_cover_property(n, nodes, alpha, seed, scheme):
    y = _labels(n, seed=seed)
    if nodes > n:
        with pytest.raises(DataError):
            partition(y, nodes, scheme, alpha, seed, order=np.arange(n))
        return
    _check_cover(partition(y, nodes, scheme, alpha, seed, order=np.arange(n)[::-1]), n)


def test_iid_sizes_and_rates_are_even():
    y = _labels(2000)
    parts = partition(y, 4, "iid", seed=0)
    assert [len(p) for p in parts] == [500] * 4
    rates = [y[p].mean() for p in parts]
    assert max(rates) - min(rates) < 0.08


def test_dirichlet_small_alpha_skews_labels_large_alpha_does_not():
    y = _labels(5000)
    skewed = [y[p].mean() for p in partition(y, 5, "dirichlet", alpha=0.1, seed=0)]
    even = [y[p].mean() for p in partition(y, 5, "dirichlet", alpha=1000, seed=0)]
    assert max(skewed) - min(skewed) > 0.3
    assert max(even) - min(even) < 0.05


def test_quantity_skew_gives_unequal_sizes():
    sizes = [len(p) for p in partition(_labels(5000), 5, "quantity", alpha=0.3, seed=0)]
    assert max(sizes) > 3 * min(sizes)


def test_blocks_are_contiguous_in_order():
    order = np.array([5, 1, 4, 2, 3, 0, 9, 8, 7, 6])
    parts = partition(np.zeros(10), 3, "blocks", order=order)
    keys = [sorted(order[p]) for p in parts]
    assert keys == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]


def test_errors_are_clear():
    y = _labels(10)
    with pytest.raises(ConfigError, match="choose one of"):
        partition(y, 2, "random")
    with pytest.raises(ConfigError, match="needs order"):
        partition(y, 2, "blocks")
    with pytest.raises(DataError, match="only 10 samples"):
        partition(y, 11)
    with pytest.raises(ConfigError, match="alpha"):
        partition(y, 2, "dirichlet", alpha=0)


def test_summary_counts():
    y = np.array([1, 0, 0, 1, 1, 0])
    parts = [np.array([0, 1]), np.array([2, 3, 4, 5])]
    assert summary(parts, y) == [
        {"node": 0, "samples": 2, "positives": 1, "positive_rate": 0.5},
        {"node": 1, "samples": 4, "positives": 2, "positive_rate": 0.5}]
    table = format_summary(parts, y)
    assert table.splitlines()[-1].split() == ["all", "6", "3", "0.500"]
