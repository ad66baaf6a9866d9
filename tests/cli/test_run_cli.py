"""``chainfl run`` end to end through the CLI on the embedded default (persisted chain + file store)."""

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sklearn.datasets import make_classification

from chainfl.cli import main
from chainfl.storage import open_store
from chainfl.storage.codec import decode_model, fetch_verified


@pytest.fixture
def labelled_csv(tmp_path):
    X, y = make_classification(n_samples=800, n_features=5, n_informative=4, n_redundant=0, weights=[0.8],
                               class_sep=1.5, random_state=2)
    frame = pd.DataFrame(X * 10, columns=[f"x{i}" for i in range(5)])
    frame["label"] = y
    path = tmp_path / "data.csv"
    frame.to_csv(path, index=False)
    return path


def test_run_federated_on_a_csv_writes_the_run_directory(chainfl_home, labelled_csv, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", "--data", str(labelled_csv), "--label", "label", "--mode",
                                       "federated", "--strategy", "median", "--nodes", "3", "--rounds", "2",
                                       "--epochs", "1", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    res = json.loads(result.output[result.output.index("{"):])

    assert res["chain"] == "eth-tester://" and res["store"].startswith((chainfl_home / "store").as_uri())
    assert [r["round"] for r in res["rounds"]] == [1, 2]
    assert all(r["loss"] is not None and 0 <= r["f1"] <= 1 for r in res["rounds"])
    assert res["test"]["source"] == "held-out split" and res["test"]["n"] == 160
    assert res["test"]["f1"] > 0.5
    assert res["audit"]["ok"] is True
    assert [n["updates"] for n in res["per_node"]] == [2, 2, 2]
    for name in ("config.json", "metrics.json", "results.json", "audit.json", "loss_f1.png", "nodes.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "loss_f1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["rounds"] == res["rounds"]
    # the release is in the store, verified by its digest, with the chosen threshold in its meta
    blob = fetch_verified(open_store(res["store"]), res["release"]["cid"], res["release"]["digest"])
    _, meta = decode_model(blob)
    assert meta["kind"] == "release" and meta["threshold"] == res["release"]["threshold"]
    assert meta["feature_names"] == [f"x{i}" for i in range(5)]


def test_run_rejects_conflicting_sources(chainfl_home, labelled_csv):
    result = CliRunner().invoke(main, ["run", "--data", str(labelled_csv), "--dataset", "eth_fraud"])
    assert result.exit_code != 0 and "either --data CSV or --dataset" in result.output
    result = CliRunner().invoke(main, ["run", "--data", str(labelled_csv)])
    assert result.exit_code == 1 and "--label" in result.output


def test_run_default_simulation_evaluates_on_a_new_persisted_chain(chainfl_home, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", "--accounts", "40", "--eval-accounts", "30", "--nodes", "3",
                                       "--rounds", "1", "--epochs", "1", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    res = json.loads(result.output[result.output.index("{"):])

    assert res["test"]["source"] == "new chain" and res["test"]["n"] == res["data"]["eval_accounts"] == 30
    assert res["data"]["data_chain"] == "eth-tester://memory" and res["data"]["train_accounts"] == 40
    assert res["data"]["eval_chain"] == "eth-tester://" + str(out / "eval-chain")
    assert res["audit"]["ok"] is True and [n["handoffs"] for n in res["per_node"]] == [1, 1, 1]
    labels = pd.read_csv(out / "eval" / "labels.csv")
    assert len(labels) == 30 and set(labels["label"]) <= {0, 1}
    # the new chain persisted in the run directory holds the simulated blocks (chainfl detect reads it)
    from chainfl.chain import connect

    with connect(res["data"]["eval_chain"]) as chain:
        assert chain.block_number() >= res["data"]["eval_blocks"][1]
        tx = chain.w3.eth.get_block(res["data"]["eval_blocks"][1], full_transactions=True)["transactions"]
        assert len(tx) > 0


@pytest.mark.parametrize("attack", ["copy", "outsider", "inflated", "unresolvable"])
def test_run_with_each_protocol_attack_exits_0_with_the_audit_ok_and_the_attackers_listed(
        chainfl_home, labelled_csv, tmp_path, attack):
    result = CliRunner().invoke(main, ["run", "--data", str(labelled_csv), "--label", "label", "--mode", "federated",
                                       "--nodes", "10", "--rounds", "3", "--epochs", "1", "--attack", attack,
                                       "--out", str(tmp_path / "run"), "--json"])
    assert result.exit_code == 0, result.output
    res = json.loads(result.output[result.output.index("{"):])
    assert res["audit"]["ok"] is True
    attackers = set(res["data"]["malicious"])
    assert len(attackers) == 2
    if attack == "outsider":            # refused on chain: never in the task's history
        assert sum(n["refused"] for n in res["per_node"] if n["outsider"]) == 2 * 3
        assert res["audit"]["misbehaving"] == {}
        assert [n["included"] for n in res["per_node"] if not n["outsider"]] == [3] * 10
    else:
        code = {"copy": "copy", "inflated": "samples", "unresolvable": "unavailable"}[attack]
        assert res["audit"]["misbehaving"] == {a: {f"flagged:{code}": 3} for a in attackers}


@pytest.mark.parametrize("strategy", ["krum", "multi-krum"])
def test_run_with_the_krum_family_passes_its_own_audit(chainfl_home, labelled_csv, tmp_path, strategy):
    result = CliRunner().invoke(main, ["run", "--data", str(labelled_csv), "--label", "label", "--mode", "federated",
                                       "--strategy", strategy, "--nodes", "5", "--rounds", "1", "--epochs", "1",
                                       "--out", str(tmp_path / "run"), "--json"])
    assert result.exit_code == 0, result.output
    res = json.loads(result.output[result.output.index("{"):])
    assert res["audit"]["ok"] is True and res["audit"]["violations"] == []


def test_run_exits_1_when_its_own_audit_fails(chainfl_home, labelled_csv, tmp_path, monkeypatch):
    from chainfl.agents import runner

    monkeypatch.setattr(runner, "_audit", lambda *a, **k: {"ok": False, "misbehaving": {},
                                                            "violations": [{"text": "[aggregate-mismatch] made up"}]})
    result = CliRunner().invoke(main, ["run", "--data", str(labelled_csv), "--label", "label", "--nodes", "2",
                                       "--rounds", "1", "--epochs", "1", "--out", str(tmp_path / "run")])
    assert result.exit_code == 1
    assert "VIOLATION [aggregate-mismatch] made up" in result.output


def test_run_table_is_not_cut_when_piped(chainfl_home, labelled_csv, tmp_path):
    out = tmp_path / "a-run-directory-with-a-rather-long-name-so-that-80-columns-would-cut-it"
    result = CliRunner().invoke(main, ["run", "--data", str(labelled_csv), "--label", "label", "--nodes", "2",
                                       "--rounds", "1", "--epochs", "1", "--quiet", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "…" not in result.output and str(out) in result.output
    cid = [line for line in result.output.splitlines() if "release CID" in line][0]
    assert "bafk" in cid and len(cid.split("│")[2].strip()) == 59


def test_run_mlp_without_rounds_stops_on_the_nodes_reports(chainfl_home, labelled_csv, tmp_path):
    """No --rounds for a network: up to 100 rounds, stopped by the rule on the nodes' reports
    (here after --stop-patience 2 rounds without improvement); the table says so."""
    result = CliRunner().invoke(main, ["run", "--data", str(labelled_csv), "--label", "label", "--mode",
                                       "federated", "--model", "logreg", "--nodes", "3", "--stop-patience", "2",
                                       "--epochs", "1", "--out", str(tmp_path / "run"), "--json"])
    assert result.exit_code == 0, result.output
    res = json.loads(result.output[result.output.index("{"):])
    assert res["data"]["planned_rounds"] == 100 and 10 <= res["data"]["finalized_rounds"] < 100
    assert res["data"]["close_reason"].startswith("stopped early on the nodes' validation reports")
    assert res["audit"]["ok"] is True and res["audit"]["release"]["stopping"]["stop"] is True
    table = CliRunner().invoke(main, ["run", "--data", str(labelled_csv), "--label", "label", "--mode", "federated",
                                      "--model", "logreg", "--nodes", "3", "--stop-patience", "2", "--epochs", "1",
                                      "--out", str(tmp_path / "run2")])
    assert table.exit_code == 0, table.output
    assert f"3 x {res['data']['finalized_rounds']} (stopped early" in table.output, table.output
