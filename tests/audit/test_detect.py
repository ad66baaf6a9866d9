"""Detect: a release trained on one chain's simulated activity scores a NEW chain (another Anvil
process, another simulation seed); its metrics equal the learning module's own evaluation."""

from __future__ import annotations

import json
import shutil
from collections import OrderedDict

import numpy as np
import pytest

from chainfl import config
from chainfl.audit.detect import (ModelRefusedError, load_release, read_labels, release_from_blob,
                                  score_chain, score_dataset, write_csv)
from chainfl.chain import connect
from chainfl.data import Dataset, Scaler, extract_features, simulate
from chainfl.errors import DataError
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
    assert sum(r["label"] for r in ranked) == int((scored.scores >= release.threshold).sum())


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
    top = {r["address"]: [t["feature"] for t in r["top_features"]] for r in scored.ranked(top=2)}
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
    assert rows[0] == "rank,address,score,label,top_features"
    assert rows[1].split(",")[1] == "q" and rows[1].split(",")[4].startswith("a:+")
    assert len(rows) == 4
