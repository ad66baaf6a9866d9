"""``chainfl detect``: the task lives on one Anvil (``--registry-rpc``), the accounts scored on
another (``--rpc``) with a simulation of a new seed; metrics against its labels."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from chainfl import config
from chainfl.chain import connect
from chainfl.cli import main
from chainfl.data import extract_features, simulate
from chainfl.learning.evaluate import evaluate
from chainfl.learning.models import ModelConfig
from chainfl.learning.train import TrainConfig
from chainfl.storage import open_store

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from audit.builders import record_chained  # noqa: E402

OTHER_ANVIL_PORT = 18748


@pytest.fixture(scope="module")
def setup(anvil_url, tmp_path_factory):
    from chainfl.chain.nodes import LocalNode

    base = tmp_path_factory.mktemp("detect-cli")
    store_dir = base / "store"
    store = open_store(store_dir.as_uri())
    with connect(anvil_url) as chain:
        sim = simulate(chain, n_accounts=60, seed=21, progress=False)
        ds = extract_features(chain.w3, sim.from_block, sim.to_block, progress=False).dataset(sim.labels)
        rec = record_chained(chain, store, n_nodes=2, rounds=2, dataset=ds,
                             model=ModelConfig(kind="mlp", hidden=(8,)),
                             train=TrainConfig(epochs=15, batch_size=16, lr=0.02, seed=1))
    node = LocalNode("anvil", settings=config.load_node_settings(), port=OTHER_ANVIL_PORT,
                     log_dir=base / "anvil-log")
    node.start(timeout=60)
    try:
        with connect(node.url) as other:
            new = simulate(other, n_accounts=40, seed=22, progress=False)
        new.save(base / "sim-new")
        yield anvil_url, node.url, store_dir, rec, new, base
    finally:
        node.stop()


def _args(setup, *extra):
    url, other_url, store_dir, rec, new, _ = setup
    return ["detect", "--task", str(rec.task_id), "--registry-rpc", url, "--rpc", other_url,
            "--store", store_dir.as_uri(), "--registry", rec.registry.address,
            "--from-block", str(new.from_block), "--to-block", str(new.to_block), *extra]


def test_detect_writes_ranked_csv_and_reports_metrics(setup, tmp_path):
    url, other_url, _, rec, new, base = setup
    out = tmp_path / "ranked.csv"
    result = CliRunner().invoke(main, _args(setup, "-o", str(out), "--labels", str(base / "sim-new"), "--json"))
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    rows = list(csv.DictReader(out.open()))
    with connect(other_url) as other:
        features = extract_features(other.w3, new.from_block, new.to_block, progress=False)
    every = features.dataset()                   # every non-contract account active in the range
    ds = features.dataset(new.labels)            # the labelled ones
    assert len(rows) == data["accounts"] == len(every) > 0
    assert [int(r["rank"]) for r in rows] == list(range(1, len(rows) + 1))
    assert [float(r["score"]) for r in rows] == sorted((float(r["score"]) for r in rows), reverse=True)
    assert {r["address"].lower() for r in rows} == {a.lower() for a in every.ids}
    assert data["metrics"]["labelled"] == len(ds)
    # the printed metrics are the learning module's evaluation of the same release on the same accounts
    release = data["release"]
    from chainfl.audit.detect import load_release

    with connect(url) as chain:
        rel, _ = load_release(chain, rec.registry.__class__.at(chain, rec.registry.address),
                              open_store(setup[2].as_uri()), rec.task_id, audit=False)
    assert rel.cid == release["cid"]
    X = rel.scaler.transform(ds.select(list(rel.feature_names)).X)
    expected = evaluate(rel.model, rel.state, X, ds.y, rel.threshold)
    for key in ("precision", "recall", "f1", "confusion"):
        assert data["metrics"][key] == expected[key], key


def test_detect_table_output(setup):
    result = CliRunner().invoke(main, _args(setup))
    assert result.exit_code == 0, result.output
    assert "Highest scores" in result.stdout and "accounts scored" in result.stdout


def test_detect_refuses_a_model_that_fails_verification(setup, tmp_path):
    url, other_url, store_dir, rec, new, _ = setup
    copy = tmp_path / "store"
    shutil.copytree(store_dir, copy)
    for p in (copy / "blocks").rglob(rec.cids[-1]):       # the final handoff's model
        p.unlink()
    args = _args(setup)
    args[args.index("--store") + 1] = copy.as_uri()
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert "fails its audit" in result.stderr and rec.cids[-1] in result.stderr


@pytest.mark.slow
def test_detect_equals_the_evaluation_in_chainfl_run(anvil_url, tmp_path):
    """`chainfl run` evaluates its release on a new simulated chain; `chainfl detect` on that chain
    with its labels reports the same precision/recall/F1 — and the run's audit verified."""
    store = (tmp_path / "store").as_uri()
    env = {"CHAINFL_HOME": str(tmp_path / "home")}
    run = CliRunner(env=env).invoke(main, [
        "run", "--mode", "federated", "--nodes", "3", "--rounds", "2", "--strategy", "screened-fedavg",
        "--accounts", "60", "--eval-accounts", "40", "--epochs", "2", "--seed", "41", "--rpc", anvil_url,
        "--store", store, "--quiet", "--json"])
    assert run.exit_code == 0, run.output
    ran = json.loads(run.stdout)
    assert ran["audit"]["ok"] is True and ran["audit"]["counts"]["aggregates_recomputed"] == 2
    first, last = ran["data"]["eval_blocks"]
    result = CliRunner(env=env).invoke(main, [
        "detect", "--task", str(ran["task_id"]), "--registry-rpc", anvil_url, "--registry", ran["registry"],
        "--rpc", ran["data"]["eval_chain"], "--store", store, "--from-block", str(first), "--to-block", str(last),
        "--labels", ran["data"]["eval_labels"], "--json"])
    assert result.exit_code == 0, result.output
    detected = json.loads(result.stdout)
    assert detected["release"]["cid"] == ran["release"]["cid"]
    assert detected["release"]["source"] == "release"
    for key in ("precision", "recall", "f1", "roc_auc", "pr_auc", "confusion", "threshold"):
        assert detected["metrics"][key] == ran["test"][key], key
