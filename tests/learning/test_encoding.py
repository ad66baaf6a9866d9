"""Shared bins from merged per-node grid counts, and the piecewise-linear encoding."""

import json

import numpy as np
import pytest

from chainfl.errors import LearningError
from chainfl.learning.encoding import (BinConfig, PLEncoder, apply_bins, bin_statistics,
                                       check_bin_statistics, edges_from_counts, grid_boundaries,
                                       grid_cells, sum_counts)


def _data(n=600, seed=0):
    rng = np.random.default_rng(seed)
    X = np.stack([rng.lognormal(0, 3, n),                         # heavy tail
                  rng.integers(0, 5, n).astype(float),            # few integers
                  np.where(rng.random(n) < 0.6, 0.0, rng.exponential(1e9, n)),   # atom at 0
                  rng.normal(0, 1e4, n),                          # signed
                  np.full(n, 7.0)], axis=1).astype(np.float32)    # constant
    return X


def test_grid_is_sorted_exact_in_float32_and_covers_the_range():
    cfg = BinConfig()
    b = grid_boundaries(cfg)
    assert np.all(np.diff(b) > 0)
    assert np.array_equal(b.astype(np.float32).astype(np.float64), b)
    assert cfg.n_cells == b.size + 1 == 2 * 128 * 8 + 3 + 1
    cells = grid_cells(np.array([[0.0], [-0.0], [1.0], [1.124], [1.126], [-1.0], [1e30], [-1e30]]), cfg)
    zero = int(np.searchsorted(b, 0.0, side="right"))
    assert cells[0, 0] == cells[1, 0] == zero                       # -0.0 and 0.0 share a cell
    assert cells[2, 0] == cells[3, 0] != cells[4, 0]                # 1 .. 1.125 is one cell (m = 3)
    assert cells[5, 0] < zero and cells[6, 0] == b.size and cells[7, 0] == 0


def test_small_integers_get_cells_of_their_own():
    cfg = BinConfig()
    cells = grid_cells(np.arange(0, 10, dtype=np.float32)[:, None], cfg)[:, 0]
    assert len(set(cells.tolist())) == 10


def test_merged_counts_equal_pooled_counts_in_any_order_and_give_the_same_edges():
    cfg = BinConfig(max_bins=16)
    X = _data()
    parts = np.array_split(np.random.default_rng(1).permutation(len(X)), 7)
    vecs = [bin_statistics(X[p], cfg) for p in parts]
    merged = sum_counts(vecs)
    assert np.array_equal(merged, bin_statistics(X, cfg).astype(np.float64))
    assert np.array_equal(sum_counts(vecs[::-1]), merged)
    e1 = edges_from_counts(merged, X.shape[1], cfg)
    e2 = edges_from_counts(bin_statistics(X, cfg), X.shape[1], cfg)
    assert all(np.array_equal(a, b) for a, b in zip(e1, e2))


def test_edges_respect_max_bins_atoms_and_constant_columns():
    cfg = BinConfig(max_bins=16)
    X = _data()
    edges = edges_from_counts(bin_statistics(X, cfg), X.shape[1], cfg)
    assert all(len(e) <= cfg.max_bins - 1 for e in edges)
    assert len(edges[1]) == 4                       # 5 distinct integers: one bin each
    assert edges[4].size == 0                       # constant
    bins = apply_bins(X, edges)
    # the 60 % zeros of column 2 share one bin, the rest is cut into shares as equal as the
    # grid's ~9 % cells allow
    counts = np.bincount(bins[:, 2])
    assert counts[0] == np.sum(X[:, 2] == 0) and len(counts) == cfg.max_bins
    assert counts[1:].max() <= 2 * counts[1:].sum() / (cfg.max_bins - 1)
    # equal-frequency on the heavy-tailed column
    c0 = np.bincount(bins[:, 0], minlength=cfg.max_bins)
    assert c0.max() <= 1.6 * len(X) / cfg.max_bins


def test_bins_follow_the_edges_exactly():
    cfg = BinConfig(max_bins=8)
    X = _data()
    edges = edges_from_counts(bin_statistics(X, cfg), X.shape[1], cfg)
    bins = apply_bins(X, edges)
    for j, e in enumerate(edges):
        want = (X[:, j].astype(np.float64)[:, None] >= e[None, :]).sum(1)
        assert np.array_equal(bins[:, j], want)


def test_check_bin_statistics_accepts_honest_and_names_problems():
    cfg = BinConfig()
    X = _data(100)
    v = bin_statistics(X, cfg)
    assert check_bin_statistics(v, X.shape[1], 100, cfg) == []
    assert check_bin_statistics(v, X.shape[1], 99, cfg)             # wrong committed rows
    bad = v.copy()
    bad[3] += 0.5
    assert check_bin_statistics(bad, X.shape[1], 100, cfg)
    bad = v.copy()
    bad[np.flatnonzero(bad)[0]] -= 1
    assert "feature 0" in check_bin_statistics(bad, X.shape[1], 100, cfg)[0]


def test_nan_is_rejected():
    with pytest.raises(LearningError, match="NaN"):
        bin_statistics(np.array([[np.nan]], np.float32), BinConfig())


def test_ple_encoder_shape_range_monotone_and_json_round_trip():
    cfg = BinConfig(max_bins=16)
    X = _data()
    enc = PLEncoder.from_counts(bin_statistics(X, cfg), X.shape[1], cfg)
    Z = enc.transform(X)
    assert Z.dtype == np.float32 and Z.shape == (len(X), enc.width)
    assert enc.width == sum(len(e) + 1 for e in enc.edges if e)
    assert Z.min() >= 0 and Z.max() <= 1
    # monotone: sorting a column sorts the sum of its components
    order = np.argsort(X[:, 0], kind="stable")
    s = Z[order, :len(enc.edges[0]) + 1].sum(1)
    assert np.all(np.diff(s) >= -1e-6)
    # components are 1 below, fractional in, 0 above the value's bin
    comp = Z[:, :len(enc.edges[0]) + 1]
    assert np.all(np.diff((comp > 0).astype(int), axis=1) <= 0)
    enc2 = PLEncoder.from_dict(json.loads(json.dumps(enc.to_dict())))
    assert enc2 == enc and np.array_equal(enc2.transform(X), Z)


def test_ple_from_dict_rejects_unsorted_edges():
    with pytest.raises(LearningError, match="strictly"):
        PLEncoder.from_dict({"edges": [[2.0, 1.0]], "lo": [0.0], "hi": [3.0]})


def test_bin_config_json_round_trip():
    cfg = BinConfig(max_bins=64, mantissa_bits=2)
    assert BinConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
