"""`data prepare` core: node files, test split, features.json; partitions, fill, text, duplicates, leaks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from chainfl.data import load_csv, load_eth_fraud
from chainfl.data.csvfile import read_frame
from chainfl.data.prepare import (Manifest, PrepareConfig, find_manifest, prepare_csv, prepare_eth_fraud,
                                  read_plan, write_prepared)
from chainfl.errors import ConfigError, DataError


def _source(tmp_path, n=600, positives=0.2, seed=0, sort_by_label=True, name="holder.csv"):
    """A holder's export: row number, address, numeric features (some blank), a token name, label;
    sorted by label like the real file, so the row number leaks the label."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < positives).astype(int)
    if sort_by_label:
        y = np.sort(y)
    frame = pd.DataFrame({
        "": np.arange(n),                                     # pandas reads this header as 'Unnamed: 0'
        "Address": [f"0x{i:040X}" for i in rng.permutation(n)],
        "sent": rng.poisson(5 + 5 * y),
        "value": np.round(rng.lognormal(1 + y, 1.0), 6),
        "era": rng.integers(2015, 2023, n),
        "token": rng.choice(["EOS", "OMG", "0", "DAI"], n, p=[0.4, 0.3, 0.2, 0.1]),
        "constant": 0,
        "FLAG": y,
    })
    frame.loc[rng.choice(n, 30, replace=False), "value"] = np.nan
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def _rows(prepared):
    return pd.concat(prepared.nodes + ([prepared.test] if prepared.test is not None else []))


def test_prepare_writes_node_files_with_ids_labels_and_the_recorded_features(tmp_path):
    src = _source(tmp_path)
    prepared = prepare_csv(src, "FLAG", PrepareConfig(nodes=4, seed=3))
    m = prepared.manifest
    assert m.features == ("sent", "value", "era")
    assert m.id_column == "Address" and m.label == "FLAG" and m.fill == 0.0
    dropped = {d["column"]: d["reason"] for d in m.dropped}
    assert set(dropped) == {"Unnamed: 0", "Address", "token", "constant"}
    assert "alone it separates the labels (ROC-AUC 1.000)" in dropped["Unnamed: 0"]   # the leak it would be
    assert dropped["constant"] == "constant: every row is 0"
    for node in prepared.nodes:
        assert list(node.columns) == ["Address", "FLAG", "sent", "value", "era"]
        assert set(node["FLAG"]) == {0, 1}                                            # iid: both classes
    rows = _rows(prepared)
    assert len(rows) == 600 and rows["Address"].is_unique
    assert rows["Address"].str.fullmatch(r"0x[0-9a-f]{40}").all()                     # lower-cased
    assert not rows.isna().any().any()                                                # blanks filled
    per_node = m.partition["per_node"]
    assert [n["rows"] for n in per_node] == [len(n) for n in prepared.nodes]
    assert [n["positives"] for n in per_node] == [int(n["FLAG"].sum()) for n in prepared.nodes]
    assert max(n["rows"] for n in per_node) - min(n["rows"] for n in per_node) <= 1
    assert m.test["rows"] == len(prepared.test) == round(0.2 * (600 - rows["FLAG"].sum())) + \
        round(0.2 * rows["FLAG"].sum())


def test_node_files_round_trip_exactly_and_carry_the_filled_values(tmp_path):
    src = _source(tmp_path)
    prepared = prepare_csv(src, "FLAG", PrepareConfig(nodes=3, fill=-1.0))
    paths = write_prepared(prepared, tmp_path / "out")
    assert [p.name for p in paths] == ["node1.csv", "node2.csv", "node3.csv", "test.csv", "features.json"]
    raw = read_frame(src)
    by_address = dict(zip(raw["Address"].str.lower(), raw["value"]))
    for k, node in enumerate(prepared.nodes, start=1):
        ds = load_csv(tmp_path / "out" / f"node{k}.csv", "FLAG")     # its features.json is not read here
        assert ds.feature_names == ["sent", "value", "era"] and ds.ids == node["Address"].tolist()
        np.testing.assert_array_equal(ds.X, node[["sent", "value", "era"]].to_numpy(np.float32))
        reread = pd.read_csv(tmp_path / "out" / f"node{k}.csv")
        original = [float(by_address[a]) if isinstance(by_address[a], str) else -1.0 for a in node["Address"]]
        assert reread["value"].tolist() == original                   # float64 exact; blanks -> -1
    assert Manifest.load(tmp_path / "out" / "features.json") == prepared.manifest


def test_prepare_is_deterministic_for_a_seed(tmp_path):
    src = _source(tmp_path)
    a = write_prepared(prepare_csv(src, "FLAG", PrepareConfig(nodes=3, seed=5)), tmp_path / "a")
    b = write_prepared(prepare_csv(src, "FLAG", PrepareConfig(nodes=3, seed=5)), tmp_path / "b")
    c = write_prepared(prepare_csv(src, "FLAG", PrepareConfig(nodes=3, seed=6)), tmp_path / "c")
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert a[0].read_bytes() != c[0].read_bytes()


def test_iid_refuses_more_nodes_than_the_smaller_class_allows(tmp_path):
    src = _source(tmp_path, n=200, positives=0.03, seed=1)
    y = pd.read_csv(src)["FLAG"]
    train_pos = int(y.sum()) - round(0.2 * int(y.sum()))
    with pytest.raises(DataError, match=rf"only {train_pos} training rows of class 1 for 50 nodes.*"
                                        rf"use --nodes {train_pos} or fewer"):
        prepare_csv(src, "FLAG", PrepareConfig(nodes=50))
    prepared = prepare_csv(src, "FLAG", PrepareConfig(nodes=train_pos))
    assert all(n["positives"] >= 1 for n in prepared.manifest.partition["per_node"])


def test_dirichlet_is_skewed_on_purpose_and_says_which_nodes_hold_one_class(tmp_path):
    src = _source(tmp_path, n=400)
    prepared = prepare_csv(src, "FLAG", PrepareConfig(nodes=8, partition="dirichlet", alpha=0.05, seed=0))
    p = prepared.manifest.partition
    assert p["note"].startswith("label skew on purpose") and p["alpha"] == 0.05
    one_class = [n["node"] for n in p["per_node"] if n["positives"] in (0, n["rows"])]
    assert one_class and p["one_class_nodes"] == one_class
    assert any("hold one class only" in w["message"] and w["nodes"] == one_class for w in prepared.manifest.warnings)
    assert len(_rows(prepared)) == 400


def test_column_partition_gives_each_node_a_range_of_the_column(tmp_path):
    src = _source(tmp_path)
    prepared = prepare_csv(src, "FLAG", PrepareConfig(nodes=4, partition="column", by="era"))
    eras = [node["era"] for node in prepared.nodes]
    assert all(a.max() <= b.min() for a, b in zip(eras, eras[1:]))
    assert prepared.manifest.partition["by"] == "era"
    with pytest.raises(DataError, match="--by column 'nope' not found"):
        prepare_csv(src, "FLAG", PrepareConfig(nodes=4, partition="column", by="nope"))
    with pytest.raises(ConfigError, match="needs --by COLUMN"):
        PrepareConfig(partition="column")


def test_listed_text_column_is_frequency_encoded_from_training_rows(tmp_path):
    src = _source(tmp_path)
    prepared = prepare_csv(src, "FLAG", PrepareConfig(nodes=2, features=("sent", "token")))
    m = prepared.manifest
    assert m.features == ("sent", "token (frequency)")
    shares = m.encodings["token"]["values"]
    assert abs(sum(shares.values()) - 1.0) < 1e-12                        # no blanks: shares of the rows
    train = pd.concat(prepared.nodes)
    raw = read_frame(src).assign(Address=lambda f: f["Address"].str.lower()).set_index("Address")
    tokens = raw.loc[train["Address"], "token"]
    expected = tokens.value_counts(normalize=True)
    assert shares == pytest.approx(expected.to_dict())
    assert train["token (frequency)"].tolist() == [shares[t] for t in tokens]


def test_fill_none_makes_a_blank_an_error_naming_its_line(tmp_path):
    src = _source(tmp_path)
    with pytest.raises(DataError, match=r"column 'value' line \d+ is empty; fill it, or pass --fill VALUE"):
        prepare_csv(src, "FLAG", PrepareConfig(fill=None))


def test_repeated_ids_keep_the_first_row_and_are_counted(tmp_path):
    path = tmp_path / "dups.csv"
    rows = [f"0x{i:040x},{i % 5},{i % 2}" for i in range(40)] + [f"0x{3:040x},99,1", f"0x{10:040X},98,0"]
    path.write_text("Address,x,label\n" + "\n".join(rows) + "\n")
    prepared = prepare_csv(path, "label", PrepareConfig(nodes=2, test_fraction=0))
    src = prepared.manifest.source
    assert src["duplicates_dropped"] == 2 and src["duplicates_with_other_label"] == 0 and src["rows_used"] == 40
    kept = _rows(prepared).set_index("Address")
    assert kept.loc[f"0x{3:040x}", "x"] == 3.0 and kept.loc[f"0x{10:040x}", "x"] == 0.0
    assert prepared.test is None and prepared.manifest.test is None
    path.write_text("Address,x,label\n" + "\n".join(rows[:40] + [f"0x{3:040x},9,0"]) + "\n")
    assert prepare_csv(path, "label", PrepareConfig(nodes=2)).manifest.source["duplicates_with_other_label"] == 1


def test_a_feature_that_separates_the_labels_is_warned_about(tmp_path):
    src = _source(tmp_path)
    frame = pd.read_csv(src)
    frame["score"] = frame["FLAG"] * 100 + np.random.default_rng(0).random(len(frame))
    frame.to_csv(src, index=False)
    warnings = prepare_csv(src, "FLAG", PrepareConfig(nodes=2)).manifest.warnings
    assert [w["column"] for w in warnings] == ["score"]
    assert "--drop 'score'" in warnings[0]["message"] and warnings[0]["roc_auc"] == 1.0
    assert prepare_csv(src, "FLAG", PrepareConfig(nodes=2, drop=("score",))).manifest.warnings == ()


def test_write_refuses_to_mix_with_a_bigger_earlier_run(tmp_path):
    src = _source(tmp_path)
    write_prepared(prepare_csv(src, "FLAG", PrepareConfig(nodes=4)), tmp_path / "out")
    with pytest.raises(ConfigError, match="already holds node4.csv"):
        write_prepared(prepare_csv(src, "FLAG", PrepareConfig(nodes=3)), tmp_path / "out")


# --- reading node files with the recorded list ------------------------------------------------

def test_read_plan_prefers_options_then_the_manifest_next_to_the_csv(tmp_path):
    src = _source(tmp_path)
    write_prepared(prepare_csv(src, "FLAG", PrepareConfig(nodes=2)), tmp_path / "out")
    node = tmp_path / "out" / "node1.csv"
    assert find_manifest(node) == tmp_path / "out" / "features.json" and find_manifest(src) is None
    plan = read_plan(node)
    assert plan.label == "FLAG" and plan.features == ("sent", "value", "era") and plan.fill == 0.0
    assert plan.id_column == "Address" and plan.manifest == str(tmp_path / "out" / "features.json")
    assert read_plan(node, drop=["era"]).drop == ("era",)
    listed = read_plan(node, features=["sent"])
    assert listed.features == ("sent",) and listed.manifest is None and listed.label == "FLAG"
    with pytest.raises(ConfigError, match="--label 'y' differs from the label 'FLAG' recorded"):
        read_plan(node, label="y")
    with pytest.raises(ConfigError, match="not in .*'s feature list"):
        read_plan(node, drop=["token"])
    with pytest.raises(ConfigError, match="either --features or --features-file"):
        read_plan(node, features=["sent"], features_file=tmp_path / "out" / "features.json")
    with pytest.raises(ConfigError, match="pass --label COLUMN"):
        read_plan(src)
    other = tmp_path / "elsewhere.csv"
    other.write_bytes(node.read_bytes())
    assert read_plan(other, features_file=tmp_path / "out" / "features.json").features == plan.features


def test_a_foreign_features_json_is_ignored_with_a_warning_or_refused_when_passed(tmp_path, caplog):
    (tmp_path / "features.json").write_text(json.dumps({"features": ["a"]}))
    csv = tmp_path / "d.csv"
    csv.write_text("a,label\n1,0\n2,1\n")
    assert read_plan(csv, label="label").manifest is None
    assert "ignoring" in caplog.text and "not a `chainfl data prepare` feature list" in caplog.text
    with pytest.raises(DataError, match="not a `chainfl data prepare` feature list"):
        read_plan(csv, label="label", features_file=tmp_path / "features.json")


# --- the real data ---------------------------------------------------------------------------

@pytest.mark.realdata
def test_real_data_gives_the_loaders_38_features_and_names_its_id_columns(real_data_dir, tmp_path):
    prepared = prepare_eth_fraud(PrepareConfig(nodes=5, seed=0), real_data_dir / "eth_fraud")
    eth = load_eth_fraud(real_data_dir / "eth_fraud")
    m = prepared.manifest
    assert list(m.features) == eth.feature_names and len(m.features) == 38
    reasons = {d["column"]: d["reason"] for d in m.dropped}
    assert reasons["Unnamed: 0"].startswith("id-like name") and "separates the labels" in reasons["Unnamed: 0"]
    assert reasons["Index"].startswith("id-like name") and reasons["Address"].startswith("id column")
    assert reasons["ERC20 most sent token type"].startswith("text (")
    assert sum(r.startswith("constant") for r in reasons.values()) == 7
    assert m.source["duplicates_dropped"] == 25 and m.source["rows_used"] == 9816 and m.warnings == ()
    # every row is the loader's row, value for value (NaN -> 0)
    rows = _rows(prepared).set_index("Address")
    X = rows.loc[eth.ids, list(eth.feature_names)].to_numpy(np.float32)
    np.testing.assert_array_equal(X, eth.X)
    assert rows.loc[eth.ids, "FLAG"].tolist() == eth.y.tolist()
    assert [n["positives"] for n in m.partition["per_node"]] == [349, 349, 349, 348, 348]
