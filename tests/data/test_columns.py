"""Column rules: id-like names and values, text, typos, constants, chunked profiles, leak checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from chainfl.data import columns as cols
from chainfl.errors import DataError


def _frame(**columns) -> pd.DataFrame:
    """A frame of string cells as the readers give them (None = empty cell)."""
    return pd.DataFrame({k: pd.Series([None if v is None else str(v) for v in vals], dtype="str")
                         for k, vals in columns.items()})


@pytest.mark.parametrize("name", ["Unnamed: 0", "unnamed:3", "Index", "idx", "id", "ID", "row", "row_number",
                                  "user_id", "account id", "accountId", "userID", "tx_hash", "TxHash", "Address",
                                  "from_address", "uuid", " Index "])
def test_id_like_names(name):
    assert cols.id_like_name(name)


@pytest.mark.parametrize("name", ["ERC20 uniq sent addr", "ERC20 uniq sent addr.1", "Unique Sent To Addresses",
                                  "paid", "valid", "Sent tnx", "avg val received", "identity_score", "rowdy",
                                  "total ether balance", "hidden"])
def test_feature_names_are_not_id_like(name):
    assert not cols.id_like_name(name)


def test_a_shuffled_row_number_under_any_name_is_id_like_but_a_unique_float_is_not():
    rng = np.random.default_rng(0)
    n = 60
    frame = _frame(k=rng.permutation(n) + 100, value=rng.normal(size=n), count=rng.integers(0, 5, n),
                   label=rng.integers(0, 2, n))
    choice = cols.choose_features(cols.profile_frame(frame), "label")
    assert choice.features == ("value", "count")
    assert dict(choice.dropped)["k"] == "id-like values: each integer 100..159 appears exactly once (a row number)"


def test_near_permutations_stay_features():
    n = 60
    base = np.arange(n)
    with_repeat = base.copy()
    with_repeat[5] = 6                                   # one value twice, one missing
    with_gap = base.copy()
    with_gap[-1] = n + 3                                 # a gap: not contiguous
    with_blank = [*base[:-1], None]
    frame = _frame(a=with_repeat, b=with_gap, c=with_blank, d=base + 0.5, label=[0, 1] * (n // 2))
    profiles = cols.profile_frame(frame)
    assert [profiles[c].permutation for c in "abcd"] == [None, None, None, None]
    small = cols.profile_frame(_frame(k=list(range(cols.MIN_PERMUTATION_ROWS - 1))))
    assert small["k"].permutation is None               # too few rows to call it a row number


def test_profiles_in_chunks_equal_the_whole_frame():
    rng = np.random.default_rng(1)
    n = 503
    frame = _frame(row=rng.permutation(n), x=np.round(rng.normal(size=n), 3),
                   t=[f"tok{i % 7}" if i % 11 else None for i in range(n)],
                   addr=[f"0x{i:040x}" for i in range(n)], z=[0] * n,
                   mix=[str(i) if i % 3 else "n/a" for i in range(n)], label=rng.integers(0, 2, n))
    whole = cols.profile_frame(frame)
    for size in (1, 7, 100, 502):
        profiler = cols.Profiler(list(frame.columns))
        for start in range(0, n, size):
            profiler.update(frame.iloc[start:start + size], start)
        assert profiler.result() == whole, size
    assert whole["row"].permutation == (0, n - 1)
    assert whole["addr"].address_like and whole["addr"].unique
    assert whole["t"].kind == "text" and whole["t"].unique is False and whole["t"].missing == 46
    assert whole["mix"].first_bad == (0, "n/a")
    assert whole["z"].constant(fill=0.0) and whole["z"].distinct == (0.0,)


def test_text_and_ids_are_dropped_with_reasons_and_address_is_the_id():
    frame = _frame(Address=["0xA", "0xB", "0xC", "0xD"], token=["Cofoundit", "0", "EOS", "EOS"], a=[1, 2, 3, 4],
                   name=["ann", "bob", "cy", "dee"], empty=[None] * 4, label=[0, 1, 0, 1])
    choice = cols.choose_features(cols.profile_frame(frame), "label")
    assert choice.features == ("a",) and choice.id_column == "Address"
    reasons = dict(choice.dropped)
    assert reasons["token"].startswith("text (3 of 4 cells are not numbers, e.g. 'Cofoundit')")
    assert reasons["name"] == "id-like values: text unique per row"
    assert reasons["empty"] == "every cell is empty"
    assert reasons["Address"].startswith("id column")


def test_a_text_feature_must_be_asked_for_and_is_then_returned_to_encode():
    frame = _frame(token=["x", "y", "x"], a=[1, 2, 3], label=[0, 1, 0])
    profiles = cols.profile_frame(frame)
    with pytest.raises(DataError, match=r"column 'token' is text .* `chainfl data prepare --features 'token'`"):
        cols.choose_features(profiles, "label", features=["a", "token"])
    choice = cols.choose_features(profiles, "label", features=["a", "token"], allow_text=True)
    assert choice.features == ("a", "token") and choice.text_features == ("token",)


def test_a_numeric_column_with_a_typo_is_an_error_not_a_silently_dropped_text_column():
    values = [str(i) for i in range(200)]
    values[150] = "12,5"
    frame = _frame(a=values, b=[i % 10 for i in range(200)], label=[0, 1] * 100)
    profiles = cols.profile_frame(frame)
    with pytest.raises(DataError, match=r"column 'a' holds numbers except in 1 of 200 cells \(first: '12,5', "
                                        r"data row 151\); fix those cells, or leave the column out with --drop 'a'"):
        cols.choose_features(profiles, "label")
    assert cols.choose_features(profiles, "label", drop=["a"]).features == ("b",)


def test_drop_and_features_name_unknown_columns():
    profiles = cols.profile_frame(_frame(a=[1, 2], b=[3, 4], label=[0, 1]))
    assert cols.choose_features(profiles, "label", drop=["b"]).features == ("a",)
    assert cols.choose_features(profiles, "label", features=["b", "a"]).features == ("b", "a")
    with pytest.raises(DataError, match=r"--drop names column\(s\) \['nope'\]"):
        cols.choose_features(profiles, "label", drop=["nope"])
    with pytest.raises(DataError, match=r"--features names column\(s\) \['nope'\]"):
        cols.choose_features(profiles, "label", features=["a", "nope"])
    with pytest.raises(DataError, match="label 'label' cannot be a feature"):
        cols.choose_features(profiles, "label", features=["label"])
    with pytest.raises(DataError, match="label column 'y' not found"):
        cols.choose_features(profiles, "y")


def test_constant_columns_are_dropped_only_when_asked_and_blanks_count_with_their_fill():
    profiles = cols.profile_frame(_frame(z=[0, None, 0], one=[1, None, 1], a=[1, 2, 3], label=[0, 1, 0]))
    assert cols.choose_features(profiles, "label").features == ("z", "one", "a")
    assert cols.choose_features(profiles, "label", fill=0.0, drop_constant=True).features == ("one", "a")
    assert cols.choose_features(profiles, "label", fill=1.0, drop_constant=True).features == ("z", "a")


def test_single_feature_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    x = rng.integers(0, 5, 300) + y * 0.5                 # many ties
    assert cols.single_feature_auc(x, y) == pytest.approx(roc_auc_score(y, x), abs=1e-12)
    assert cols.single_feature_auc(x, np.zeros(300)) is None


def test_leak_warnings_name_the_column_and_the_drop_option_in_either_direction():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 400)
    X = np.column_stack([y * 10 + rng.random(400), -y + rng.random(400) * 0.1, rng.normal(size=400)])
    warnings = cols.leak_warnings(X, y, ["leak", "inverse", "honest"])
    assert [w.column for w in warnings] == ["leak", "inverse"]
    assert warnings[0].auc == 1.0 and warnings[1].auc == 0.0
    assert "--drop 'leak'" in warnings[0].message and "alone separates the labels" in warnings[0].message
