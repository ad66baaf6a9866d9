"""`chainfl data prepare` / `data eth-fraud -o` and the data options of `node stats` and `chainfl run`,
through click's CliRunner."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from chainfl.agents.node import LocalData
from chainfl.cli import main
from chainfl.data import load_csv, load_eth_fraud
from chainfl.data.scaling import FeatureStats


@pytest.fixture
def holder_csv(tmp_path):
    """A data holder's export, sorted by label, with a row number, addresses, a token-name column,
    blanks and a column that gives the label away."""
    rng = np.random.default_rng(7)
    n = 500
    y = np.sort((rng.random(n) < 0.25).astype(int))
    frame = pd.DataFrame({"": np.arange(n), "Address": [f"0x{i:040x}" for i in rng.permutation(n)],
                          "sent": rng.poisson(4 + 4 * y), "value": np.round(rng.lognormal(1 + y, 1.0), 5),
                          "token": rng.choice(["EOS", "0", "OMG"], n), "score": y * 50 + rng.random(n),
                          "FLAG": y})
    frame.loc[rng.choice(n, 25, replace=False), "value"] = np.nan
    path = tmp_path / "holder.csv"
    frame.to_csv(path, index=False)
    return path


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_prepare_then_node_stats_use_the_one_recorded_feature_list(holder_csv, tmp_path):
    out = tmp_path / "nodes"
    result = _invoke("data", "prepare", "--data", holder_csv, "--label", "FLAG", "--nodes", 3, "--drop", "score",
                     "-o", out, "--json")
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    assert manifest["features"] == ["sent", "value"] and manifest["fill"] == 0.0
    assert {d["column"] for d in manifest["dropped"]} == {"Unnamed: 0", "Address", "token", "score"}
    assert result.stderr == ""                                        # the leaking column was dropped
    stats = []
    for k in (1, 2, 3):
        node = out / f"node{k}.csv"
        result = _invoke("node", "stats", "--data", node, "-o", tmp_path / f"stats{k}.json", "--json")
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)
        assert summary["features"] == manifest["features"] and summary["label"] == "FLAG"
        assert summary["features_file"] == str(out / "features.json")
        got = FeatureStats.from_dict(json.loads((tmp_path / f"stats{k}.json").read_text()))
        ds = load_csv(node, "FLAG", features=manifest["features"])
        assert got == LocalData.split(ds.X, ds.y, ds.feature_names, 0.2, 0).stats()     # what node run trains on
        assert summary["training_rows"] == got.count and summary["rows"] == len(ds)
        stats.append(got)
    assert FeatureStats.merge(stats).count == sum(s.count for s in stats)


def test_prepare_warns_on_a_column_that_separates_the_labels(holder_csv, tmp_path):
    result = _invoke("data", "prepare", "--data", holder_csv, "--label", "FLAG", "--nodes", 2, "-o", tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert "warning: column 'score' alone separates the labels (single-feature ROC-AUC 1.000)" in result.stderr
    assert "--drop 'score'" in result.stderr
    assert "not a feature: 'Unnamed: 0'" in result.stdout and "ROC-AUC 1.000" in result.stdout
    recorded = json.loads((tmp_path / "o" / "features.json").read_text())
    assert [w["column"] for w in recorded["warnings"]] == ["score"]


def test_prepare_encodes_a_listed_text_column_and_node_stats_reads_it(holder_csv, tmp_path):
    result = _invoke("data", "prepare", "--data", holder_csv, "--label", "FLAG", "--nodes", 2,
                     "--features", "sent,token", "--test-fraction", 0, "-o", tmp_path / "o", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["features"] == ["sent", "token (frequency)"]
    assert not (tmp_path / "o" / "test.csv").exists()
    result = _invoke("node", "stats", "--data", tmp_path / "o" / "node2.csv", "-o", tmp_path / "s.json", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["features"] == ["sent", "token (frequency)"]


def test_node_stats_options_without_a_features_json(holder_csv, tmp_path):
    out = tmp_path / "s.json"
    result = _invoke("node", "stats", "--data", holder_csv, "--label", "FLAG", "-o", out, "--json")
    assert result.exit_code == 1 and "column 'value' line" in result.output and "--fill VALUE" in result.output
    result = _invoke("node", "stats", "--data", holder_csv, "--label", "FLAG", "--fill", "0", "--drop", "score",
                     "-o", out, "--json", "--val-fraction", "0.3", "--split-seed", "4")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["features"] == ["sent", "value"]                  # no row number, address, text
    assert [d["column"] for d in summary["not_features"]] == ["Unnamed: 0", "Address", "token", "score"]
    ds = load_csv(holder_csv, "FLAG", drop=["score"], fill_missing=0.0)
    expected = LocalData.split(ds.X, ds.y, ds.feature_names, 0.3, 4).stats()
    assert FeatureStats.from_dict(json.loads(out.read_text())) == expected
    result = _invoke("node", "stats", "--data", holder_csv, "--label", "FLAG", "--features", "sent", "--features",
                     "score", "-o", out)
    assert result.exit_code == 0, result.output
    assert "wrote statistics of" in result.output and "2 features" in result.output
    result = _invoke("node", "stats", "--data", holder_csv, "--label", "FLAG", "--features", "token", "-o", out)
    assert result.exit_code == 1 and "chainfl data prepare --features 'token'" in result.output


@pytest.mark.parametrize("args, message", [
    (["--label", "FLAG"], "pass either --data CSV --label COLUMN or --dataset eth_fraud"),
    (["--data", "{csv}"], "--data CSV needs --label COLUMN"),
    (["--data", "{csv}", "--label", "FLAG", "--fill", "none"], "column 'value' line"),
    (["--data", "{csv}", "--label", "FLAG", "--partition", "column"], "needs --by COLUMN"),
    (["--data", "{csv}", "--label", "FLAG", "--features", "nope"], "--features names column(s) ['nope']"),
    (["--data", "{csv}", "--label", "FLAG", "--max-rows", "10"], "more than 10 data rows"),
])
def test_prepare_errors_are_clean(holder_csv, tmp_path, args, message):
    result = _invoke("data", "prepare", *[a.format(csv=holder_csv) for a in args], "-o", tmp_path / "o")
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output


def test_run_takes_the_data_options(chainfl_home, holder_csv, tmp_path):
    result = _invoke("run", "--data", holder_csv, "--label", "FLAG", "--fill", "0", "--drop", "score",
                     "--test-fraction", "0.3", "--val-fraction", "0.25", "--nodes", 2, "--rounds", 2, "--epochs", 1,
                     "--mode", "federated", "--out", tmp_path / "run", "--quiet", "--json")
    assert result.exit_code == 0, result.output
    res = json.loads(result.stdout[result.stdout.index("{"):])
    assert res["data"]["features"] == ["sent", "value"]
    assert res["config"]["test_fraction"] == 0.3 and res["config"]["val_fraction"] == 0.25
    y = pd.read_csv(holder_csv)["FLAG"]
    assert res["test"]["n"] == round(0.3 * int(y.sum())) + round(0.3 * int((1 - y).sum()))


# --- the real data ---------------------------------------------------------------------------

@pytest.mark.realdata
def test_prepare_the_real_dataset_then_node_stats(real_data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("CHAINFL_DATA_DIR", str(real_data_dir))
    out = tmp_path / "eth"
    result = _invoke("data", "prepare", "--dataset", "eth_fraud", "--nodes", 5, "-o", out, "--json")
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    assert len(manifest["features"]) == 38 and manifest["label"] == "FLAG" and manifest["id_column"] == "Address"
    dropped = {d["column"] for d in manifest["dropped"]}
    assert {"Unnamed: 0", "Index", "Address"} <= dropped
    result = _invoke("node", "stats", "--data", out / "node3.csv", "-o", tmp_path / "s.json", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["features"] == manifest["features"]


@pytest.mark.realdata
def test_node_stats_on_the_raw_real_file_leaves_out_its_id_columns(real_data_dir, tmp_path):
    raw = real_data_dir / "eth_fraud" / "transaction_dataset.csv"
    result = _invoke("node", "stats", "--data", raw, "--label", "FLAG", "--fill", "0", "-o", tmp_path / "s.json",
                     "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    reasons = {d["column"]: d["reason"] for d in summary["not_features"]}
    assert {"Unnamed: 0", "Index", "Address"} <= set(reasons) and reasons["Index"].startswith("id-like name")
    assert not {"Unnamed: 0", "Index"} & set(summary["features"])
    assert "Sent tnx" in summary["features"] and summary["rows"] == 9841


@pytest.mark.realdata
def test_eth_fraud_writes_the_cleaned_data(real_data_dir, tmp_path):
    out = tmp_path / "cleaned.csv"
    result = _invoke("data", "eth-fraud", "--path", real_data_dir / "eth_fraud", "-o", out, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["output"] == str(out)
    eth = load_eth_fraud(real_data_dir / "eth_fraud")
    header = out.read_text().splitlines()[0].split(",")
    assert header[:2] == ["Address", "FLAG"] and len(header) == 2 + 38
    cleaned = load_csv(out, "FLAG")
    assert cleaned.feature_names == eth.feature_names and cleaned.ids == eth.ids
    np.testing.assert_array_equal(cleaned.X, eth.X)                   # float32 values written exactly
    np.testing.assert_array_equal(cleaned.y, eth.y)
