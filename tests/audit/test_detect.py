"""Detect: a release trained on one chain's simulated activity scores a NEW chain (another Anvil
process, another simulation seed); its metrics equal the learning module's own evaluation."""

from __future__ import annotations

import csv
import json
import shutil
from collections import OrderedDict

import numpy as np
import pytest

from chainfl import config
from chainfl.audit.detect import (OOD_Z, FeaturesNotComputableError, ModelRefusedError, Scored, alert_cap,
                                  load_release, out_of_distribution, read_addresses, read_labels,
                                  release_from_blob, score_chain, score_dataset, write_csv)
from chainfl.data import schema
from chainfl.chain import connect
from chainfl.data import Dataset, Scaler, extract_features, simulate
from chainfl.errors import ConfigError, DataError
from chainfl.learning.evaluate import evaluate
from chainfl.learning.models import ModelConfig, build_model, get_state
from chainfl.learning.train import TrainConfig
from chainfl.storage import open_store
from chainfl.storage.codec import encode_model

from .builders import record_chained

SECOND_ANVIL_PORT = 18747     # a second, independent chain for "a chain the model never saw"


@pytest.fixture(scope="module")
def new_chain(tmp_path_factory):
    """A fresh Anvil process with a simulation (seed 12) the model never saw; yields (url, sim)."""
    from chainfl.chain.nodes import LocalNode

    node = LocalNode("anvil", settings=config.load_node_settings(), port=SECOND_ANVIL_PORT,
                     log_dir=tmp_path_factory.mktemp("anvil2-log"))
    node.start(timeout=60)
    try:
        with connect(node.url) as chain:
            sim = simulate(chain, n_accounts=60, seed=12, progress=False)
        yield node.url, sim
    finally:
        node.stop()


@pytest.fixture(scope="module")
def trained(anvil_url, tmp_path_factory):
    """A chained task trained on the features of a simulation (seed 11) on the session's Anvil."""
    store_dir = tmp_path_factory.mktemp("detect") / "store"
    store = open_store(store_dir.as_uri())
    with connect(anvil_url) as chain:
        sim = simulate(chain, n_accounts=80, seed=11, progress=False)
        ds = extract_features(chain.w3, sim.from_block, sim.to_block, progress=False).dataset(sim.labels)
        rec = record_chained(chain, store, n_nodes=2, rounds=3, dataset=ds,
                             model=ModelConfig(kind="mlp", hidden=(16,)),
                             train=TrainConfig(epochs=20, batch_size=16, lr=0.02, seed=0))
    return anvil_url, store_dir, rec


def test_release_scores_a_new_chain_and_metrics_equal_evaluate(trained, new_chain):
    url, store_dir, rec = trained
    new_url, sim = new_chain
    with connect(url) as chain:
        release, report = load_release(chain, rec.registry.__class__.at(chain, rec.registry.address),
                                       open_store(store_dir.as_uri()), rec.task_id)
    assert report.ok
    assert release.source == "release" and release.cid == rec.release[1]
    assert release.threshold == pytest.approx(rec.threshold)
    with connect(new_url) as other:
        scored = score_chain(release, other.w3, sim.from_block, sim.to_block)
        ds = extract_features(other.w3, sim.from_block, sim.to_block, progress=False).dataset(sim.labels)
    metrics = scored.metrics(sim.labels)
    # the same model evaluated by the learning module on the same labelled accounts
    X = release.scaler.transform(ds.select(list(release.feature_names)).X)
    expected = evaluate(release.model, release.state, X, ds.y, release.threshold)
    for key in ("precision", "recall", "f1", "roc_auc", "pr_auc", "confusion"):
        assert metrics[key] == expected[key], key
    assert metrics["labelled"] == len(ds) == 60
    assert metrics["roc_auc"] > 0.6            # it learned something that transfers to a new chain
    # every non-contract account of the range is scored and ranked by score
    ranked = scored.ranked()
    assert [r["rank"] for r in ranked] == list(range(1, len(ranked) + 1))
    assert all(a["score"] >= b["score"] for a, b in zip(ranked, ranked[1:]))
    assert sum(r["predicted"] for r in ranked) == int((scored.scores >= release.threshold).sum())
    assert {r["threshold"] for r in ranked} == {release.threshold} and {r["rank_cap"] for r in ranked} == {None}
    assert scored.out_of_distribution()["warning"] is False      # the same simulator, another seed


def test_tampered_history_is_refused(trained, tmp_path):
    url, store_dir, rec = trained
    copy = tmp_path / "store"
    shutil.copytree(store_dir, copy)
    (path,) = [p for p in (copy / "blocks").rglob(rec.cids[1]) if p.is_file()]
    path.write_bytes(path.read_bytes()[:-1] + bytes([path.read_bytes()[-1] ^ 0xFF]))
    with connect(url) as chain:
        registry = rec.registry.__class__.at(chain, rec.registry.address)
        with pytest.raises(ModelRefusedError, match=rf"fails its audit.*{rec.cids[1]}"):
            load_release(chain, registry, open_store(copy.as_uri()), rec.task_id)


def test_attribution_of_a_linear_model_is_weight_times_scaled_value():
    names = ["a", "b", "c"]
    X = np.array([[1.0, 2.0, 3.0], [0.0, 5.0, 1.0], [4.0, 0.0, 0.0]], dtype=np.float32)
    scaler = Scaler.fit(X, names)
    state = OrderedDict([("net.0.weight", np.array([[0.5, -1.0, 2.0]], dtype=np.float32)),
                         ("net.0.bias", np.array([0.1], dtype=np.float32))])
    assert list(get_state(build_model(ModelConfig(kind="logreg"), 3))) == list(state)
    blob = encode_model(state, {"threshold": 0.4, "scaler": scaler.to_dict(), "feature_names": names,
                                "model": ModelConfig(kind="logreg").to_dict()})
    release = release_from_blob(blob, task_id=1, cid="bafk-test")
    scored = score_dataset(release, Dataset(X, np.zeros(3, dtype=np.int64), names, ["x", "y", "z"], "t"))
    Xs = scaler.transform(X).astype(np.float64)
    np.testing.assert_allclose(scored.attributions, Xs * np.array([0.5, -1.0, 2.0]), rtol=1e-6)
    logits = Xs @ np.array([0.5, -1.0, 2.0]) + 0.1
    np.testing.assert_allclose(scored.scores, 1 / (1 + np.exp(-logits)), rtol=1e-6)
    top = {r["address"]: [t["feature"] for t in r["top_features"]] for r in scored.ranked(explain=2)}
    assert top["x"] == ["c"]                     # only positive contributions are "drivers"


def test_release_without_threshold_is_refused():
    names = ["a"]
    scaler = Scaler.fit(np.array([[1.0], [2.0]], dtype=np.float32), names)
    state = get_state(build_model(ModelConfig(kind="logreg"), 1))
    blob = encode_model(state, {"scaler": scaler.to_dict(), "feature_names": names,
                                "model": ModelConfig(kind="logreg").to_dict()})
    with pytest.raises(ModelRefusedError, match="no decision threshold"):
        release_from_blob(blob, task_id=3, cid="bafk-x")


def test_labels_from_csv_directory_and_json(tmp_path):
    (tmp_path / "labels.csv").write_text("address,label,typology\n0xAbC,1,mixer\n0xdef,0,normal\n")
    assert read_labels(tmp_path) == {"0xabc": 1, "0xdef": 0}
    (tmp_path / "l.json").write_text(json.dumps({"0xAA": 1}))
    assert read_labels(tmp_path / "l.json") == {"0xaa": 1}
    (tmp_path / "bad.csv").write_text("address,label\n0x1,maybe\n")
    with pytest.raises(DataError, match=r"bad.csv:2: label 'maybe'"):
        read_labels(tmp_path / "bad.csv")


def test_csv_is_ranked_with_features(tmp_path):
    names = ["a", "b"]
    X = np.array([[0.0, 1.0], [3.0, 0.0], [1.0, 1.0]], dtype=np.float32)
    scaler = Scaler.fit(X, names)
    state = OrderedDict([("net.0.weight", np.array([[1.0, 0.5]], dtype=np.float32)),
                         ("net.0.bias", np.array([0.0], dtype=np.float32))])
    blob = encode_model(state, {"threshold": 0.5, "scaler": scaler.to_dict(), "feature_names": names,
                                "model": {"kind": "logreg"}})
    scored = score_dataset(release_from_blob(blob, task_id=1, cid="c"),
                           Dataset(X, np.zeros(3, dtype=np.int64), names, ["p", "q", "r"], "t"))
    path = write_csv(scored, tmp_path / "out.csv")
    rows = path.read_text().splitlines()
    assert rows[0] == "rank,address,score,predicted,threshold,rank_cap,max_abs_z,top_features"
    assert rows[1].split(",")[1] == "q" and rows[1].split(",")[7].startswith("a:+")
    assert float(rows[1].split(",")[6]) == pytest.approx(np.abs(scaler.transform(X[1:2])).max(), abs=0.01)
    assert rows[1].split(",")[3:6] == ["1", "0.5", ""]
    assert len(rows) == 4
    labelled = write_csv(scored.with_cap(top=1), tmp_path / "l.csv", labels={"Q": 0, "r": 1})
    rows = list(csv.DictReader(labelled.open()))
    assert [(r["address"], r["predicted"], r["rank_cap"], r["label"]) for r in rows] == [
        ("q", "1", "1", "0"), ("r", "0", "1", "1"), ("p", "0", "1", "")]   # r is above 0.5 but beyond the cap


def _linear_release(names, X, threshold=0.5, weights=None, scaler=None):
    weights = np.ones(len(names), dtype=np.float32) if weights is None else np.asarray(weights, dtype=np.float32)
    scaler = scaler or Scaler.fit(X, names)
    state = OrderedDict([("net.0.weight", weights[None, :]), ("net.0.bias", np.array([0.0], dtype=np.float32))])
    blob = encode_model(state, {"threshold": threshold, "scaler": scaler.to_dict(), "feature_names": list(names),
                                "model": {"kind": "logreg"}})
    return release_from_blob(blob, task_id=7, cid="bafk-linear")


class _NoChain:
    """A web3 stand-in that fails any use: proves nothing is read from a chain."""

    def __getattr__(self, name):
        raise AssertionError(f"the chain was used ({name}) before the features were checked")


def test_a_release_reading_erc20_features_is_refused_before_any_block_is_read():
    names = [*schema.DERIVED_FROM_CHAIN, "Total ERC20 tnxs", schema.MISSING_FLAG]
    release = _linear_release(names, np.abs(np.random.default_rng(0).normal(size=(5, len(names)))))
    with pytest.raises(FeaturesNotComputableError) as e:
        score_chain(release, _NoChain(), 0, 10)
    message = str(e.value)
    assert "2 of 24 features cannot be computed from a chain" in message
    assert "'Total ERC20 tnxs', 'ERC20 block empty'" in message
    assert "chainfl.data.schema.DERIVED_FROM_CHAIN (22 features" in message


def test_out_of_distribution_rule_is_hand_computable():
    Z = np.zeros((200, 3))
    Z[0, 0] = 11.0                      # a: 1 row of 200 beyond 10 -> 0.5 %: below the 1 % bar
    Z[1:3, 1] = [-10.5, 10.0]           # b: one beyond (|-10.5|), one exactly at 10 (not beyond)
    Z[:150, 2] = 40.0                   # c: 75 % beyond
    quiet = out_of_distribution(Z[:, :2], ["a", "b"])
    assert out_of_distribution(Z[:100, :2], ["a", "b"])["warning"] is False    # 1 % of 100, but 1 row < 3
    assert quiet["warning"] is False and quiet["features"] == [] and quiet["rows_beyond"] == 2
    loud = out_of_distribution(Z, ["a", "b", "c"])
    assert loud["warning"] is True and loud["features_beyond"] == 1 and loud["z"] == OOD_Z
    assert loud["features"] == [{"feature": "c", "share": 0.75, "rows": 150, "max_abs_z": 40.0}]
    assert "'c' 75% beyond, max |z| 40" in loud["message"]
    strict = out_of_distribution(Z, ["a", "b", "c"], min_share=0.005, min_rows=1)
    assert [f["feature"] for f in strict["features"]] == ["c", "a", "b"]       # by share, then |z|
    assert out_of_distribution(np.zeros((0, 2)), ["a", "b"])["warning"] is False


def test_out_of_distribution_warns_on_inputs_far_from_the_training_scale():
    names = ["x", "y"]
    train = np.random.default_rng(1).uniform(0, 1, size=(500, 2)).astype(np.float32)
    release = _linear_release(names, train)
    ids = [f"a{i}" for i in range(100)]
    same = score_dataset(release, Dataset(train[:100], np.zeros(100, dtype=np.int64), names, ids, "t"))
    assert same.out_of_distribution()["warning"] is False
    far = train[:100].copy()
    far[:, 1] *= 1e9                   # e.g. wei where training had ether
    shifted = score_dataset(release, Dataset(far, np.zeros(100, dtype=np.int64), names, ids, "t"))
    ood = shifted.out_of_distribution()
    assert ood["warning"] is True and [f["feature"] for f in ood["features"]] == ["y"]


def test_real_data_is_inside_its_own_training_distribution(real_data_dir):
    """The rule does not fire on the data a scaler was fitted on (eth_fraud, chain-computable
    columns, a held-out fifth): 3 of 1,964 rows lie beyond |z| > 10 in some feature."""
    from chainfl.data import load_eth_fraud

    ds = load_eth_fraud().select(list(schema.DERIVED_FROM_CHAIN))
    order = np.random.default_rng(0).permutation(len(ds))
    cut = int(0.8 * len(ds))
    scaler = Scaler.fit(ds.X[order[:cut]], ds.feature_names)
    ood = out_of_distribution(scaler.transform(ds.X[order[cut:]]), ds.feature_names)
    assert ood["warning"] is False and ood["rows_beyond"] < 0.01 * (len(ds) - cut)


def test_alert_cap_takes_the_stricter_of_top_and_budget():
    assert alert_cap(100) is None
    assert alert_cap(100, top=5) == 5 and alert_cap(100, budget=0.03) == 3
    assert alert_cap(100, top=5, budget=0.03) == 3 and alert_cap(100, top=2, budget=0.5) == 2
    assert alert_cap(50, budget=0.01) == 0 and alert_cap(10, budget=0.3) == 3       # floor, exact at 0.3
    for bad in ({"budget": 0.0}, {"budget": 1.5}, {"top": -1}):
        with pytest.raises(ConfigError, match="--budget|--top"):
            alert_cap(10, **bad)


def test_capped_alerts_are_the_highest_scores_at_or_above_the_threshold():
    scores = np.array([0.9, 0.2, 0.7, 0.7, 0.6, 0.95])
    s = Scored(["f", "e", "d", "c", "b", "a"], scores, np.zeros((6, 1)), ["x"], 0.65)
    assert s.predicted.tolist() == [True, False, True, True, False, True]
    capped = s.with_cap(top=3)
    # ranks: a .95, f .9, then the tie at .7 by address: c before d
    assert capped.ranks.tolist() == [2, 6, 4, 3, 5, 1]
    assert capped.predicted.tolist() == [True, False, False, True, False, True]
    assert s.with_cap(budget=0.5).rank_cap == 3 and s.with_cap(top=10).predicted.sum() == 4
    m = capped.metrics({"a": 1, "c": 0, "d": 1, "e": 0})
    assert m["confusion"] == [[1, 1], [0, 2]]           # at the threshold: a, c, d flagged
    assert m["alerts"] == {"flagged": 2, "true_positives": 1, "precision": 0.5, "recall": 0.5, "f1": 0.5,
                           "rank_cap": 3}


def test_addresses_from_a_csv_or_one_per_line(tmp_path):
    a, b = "0x" + "Ab" * 20, "0x" + "cd" * 20
    (tmp_path / "fraud.csv").write_text(f"Index,Address,FLAG\n1,{a},1\n2,{b},0\n3,{a},1\n")
    assert read_addresses(tmp_path / "fraud.csv") == [a.lower(), b]
    (tmp_path / "list.txt").write_text(f"# suspects\n{b}\n\n{a}\n")
    assert read_addresses(tmp_path / "list.txt") == [b, a.lower()]
    (tmp_path / "head.txt").write_text(f"address\n{a}\n")
    assert read_addresses(tmp_path / "head.txt") == [a.lower()]
    (tmp_path / "bad.txt").write_text(f"{a}\n0x1234\n")
    with pytest.raises(DataError, match=r"bad.txt:2: '0x1234' is not an address"):
        read_addresses(tmp_path / "bad.txt")
    (tmp_path / "nocol.csv").write_text(f"who,flag\n{a},1\n")
    with pytest.raises(DataError, match="no address column"):
        read_addresses(tmp_path / "nocol.csv")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(DataError, match="lists no addresses"):
        read_addresses(tmp_path / "empty.txt")
