"""`chainfl simulate` and `chainfl data ...` through click's CliRunner on a real Anvil node."""

from __future__ import annotations

import csv
import json
import os

from click.testing import CliRunner

from chainfl.cli import main


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_simulate_then_features_with_labels_and_resume(anvil_url, tmp_path):
    runner = CliRunner()
    seed = 70_000 + os.getpid() % 10_000          # fresh accounts on the shared session node
    out = tmp_path / "sim"
    result = runner.invoke(main, ["simulate", "--rpc", anvil_url, "--accounts", "40", "--seed", str(seed),
                                  "--days", "2", "--funder", "58", "--out", str(out), "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["accounts"] == 40 and summary["transactions"] > 100
    labels = {r["address"]: int(r["label"]) for r in _rows(out / "labels.csv")}
    assert len(labels) == 40

    lo, hi = summary["from_block"], summary["to_block"]
    whole = tmp_path / "whole.csv"
    result = runner.invoke(main, ["data", "features", "--rpc", anvil_url, "--from-block", str(lo),
                                  "--to-block", str(hi), "-o", str(whole), "--labels", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    rows = _rows(whole)
    assert {r["address"] for r in rows} == set(labels)
    assert all(int(r["label"]) == labels[r["address"]] for r in rows)
    assert "Sent tnx" in rows[0] and "total ether balance" in rows[0]

    # the same range in two invocations, resumed from a state file, gives the same CSV
    state, split = tmp_path / "state.json", tmp_path / "split.csv"
    mid = (lo + hi) // 2
    for args in (["--from-block", str(lo), "--to-block", str(mid)], ["--to-block", str(hi)]):
        result = runner.invoke(main, ["data", "features", "--rpc", anvil_url, *args, "--state", str(state),
                                      "-o", str(split), "--labels", str(out), "--quiet"])
        assert result.exit_code == 0, result.output
    assert split.read_text() == whole.read_text()


def test_simulate_rejects_bad_settings_cleanly():
    result = CliRunner().invoke(main, ["simulate", "--rpc", "eth-tester://memory", "--accounts", "5"])
    assert result.exit_code == 1
    assert "n_accounts must be >= 30" in result.output


def test_eth_fraud_describes_the_real_data(real_data_dir):
    result = CliRunner().invoke(main, ["data", "eth-fraud", "--path", str(real_data_dir / "eth_fraud"), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["rows"] == 9816 and info["positives"] == 2179 and len(info["features"]) == 38
    assert "Sent tnx" in info["derived_from_chain"]
