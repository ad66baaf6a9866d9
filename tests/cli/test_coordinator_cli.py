"""``chainfl coordinator run`` resumes its task by default: rerunning the same command (or one
with the task file) drives the open task instead of creating another; --new creates one."""

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from chainfl.cli import main


@pytest.fixture
def stats_files(tmp_path, chainfl_home):
    rng = np.random.default_rng(0)
    runner = CliRunner()
    paths = []
    for k in range(2):
        frame = pd.DataFrame(rng.normal(size=(60, 3)) * 10, columns=["a", "b", "c"])
        frame["y"] = (rng.random(60) < 0.3).astype(int)
        csv = tmp_path / f"node{k}.csv"
        frame.to_csv(csv, index=False)
        out = tmp_path / f"stats{k}.json"
        result = runner.invoke(main, ["node", "stats", "--data", str(csv), "--label", "y", "-o", str(out)])
        assert result.exit_code == 0, result.output
        paths.append(out)
    return paths


def _coordinate(stats, task_file, *extra):
    args = ["coordinator", "run", "--deploy", "--mode", "federated", "--nodes", "2", "--rounds", "1", "--model", "mlp",
            "--task-file", str(task_file), "--timeout", "1", "--poll", "0.2"]
    for s in stats:
        args += ["--stats", str(s)]
    return CliRunner().invoke(main, args + list(extra))


def test_rerunning_the_coordinator_resumes_its_open_task(stats_files, tmp_path):
    task_file = tmp_path / "task.json"
    first = _coordinate(stats_files, task_file)
    assert first.exit_code == 1 and "not finished after 1 s" in first.output     # no node came
    assert json.loads(task_file.read_text())["task_id"] == 1
    again = _coordinate(stats_files, task_file)                                 # the task file names it
    assert "resuming task 1 from" in again.output and json.loads(task_file.read_text())["task_id"] == 1
    other = tmp_path / "other.json"
    same = _coordinate(stats_files, other)                                      # same settings, no file
    assert "resuming task 1: open, coordinated by this account, same settings" in same.output
    new = _coordinate(stats_files, other, "--new")
    assert "resuming" not in new.output and json.loads(other.read_text())["task_id"] == 2
    changed = _coordinate(stats_files, tmp_path / "third.json", "--rounds", "2")   # other settings: new task
    assert "resuming" not in changed.output and json.loads((tmp_path / "third.json").read_text())["task_id"] == 3


def test_signed_statistics_commit_each_node_to_its_row_count(tmp_path, chainfl_home):
    from chainfl import config
    from chainfl.agents.setup import build_spec, read_stats, stats_for_nodes
    from chainfl.chain.accounts import derive_account
    from chainfl.errors import ConfigError

    rng = np.random.default_rng(1)
    mnemonic = config.load_node_settings().mnemonic
    nodes = [derive_account(mnemonic, i).address for i in (1, 2)]
    signed = []
    for k, rows in ((1, 50), (2, 80)):
        frame = pd.DataFrame(rng.normal(size=(rows, 2)), columns=["a", "b"])
        frame["y"] = np.arange(rows) % 3 == 0
        frame["y"] = frame["y"].astype(int)
        csv = tmp_path / f"n{k}.csv"
        frame.to_csv(csv, index=False)
        out = tmp_path / f"s{k}.json"
        result = CliRunner().invoke(main, ["node", "stats", "--data", str(csv), "--label", "y", "--account", str(k),
                                           "-o", str(out)])
        assert result.exit_code == 0, result.output
        signed.append(json.loads(out.read_text()))
    entries = [read_stats(d) for d in reversed(signed)]              # given in the wrong order ...
    ordered = stats_for_nodes(entries, nodes)                          # ... matched by signature
    spec = build_spec(mode="federated", nodes=nodes, rounds=1, stats=ordered)
    assert spec.node_samples == {nodes[0]: ordered[0].count, nodes[1]: ordered[1].count}
    assert ordered[0].count < ordered[1].count
    forged = dict(signed[0], count=10**9)                              # a node inflating its commitment later
    with pytest.raises(ConfigError, match="signed by"):
        read_stats(forged)
    with pytest.raises(ConfigError, match="signed by the same node"):
        stats_for_nodes(entries[:1] + entries[:1], nodes)
    with pytest.raises(ConfigError, match="missing for"):
        stats_for_nodes(entries, [nodes[0], derive_account(mnemonic, 3).address])


def test_the_coordinator_records_the_peer_metric_it_is_given(stats_files, tmp_path):
    task_file = tmp_path / "task.json"
    out = _coordinate(stats_files, task_file, "--peer", "--peer-metric", "auc+loss", "--peer-seconds", "7",
                      "--reports", str(tmp_path / "reports"))
    assert out.exit_code == 1 and "not finished after 1 s" in out.output, out.output
    audit = CliRunner().invoke(main, ["audit", "--task", "1", "--json"])
    spec = json.loads(audit.output[audit.output.index("{"):])["spec"]
    assert spec["peer"]["metric"] == "auc+loss" and spec["peer"]["seconds"] == 7
