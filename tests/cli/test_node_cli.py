"""`chainfl node stats` / `node run`: the training rows, waiting for a task, the feature checks."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from chainfl.agents.node import LocalData
from chainfl.cli import main
from chainfl.cli.node import _check_features, _wait_for_task, training_rows
from chainfl.data.prepare import ReadPlan
from chainfl.errors import AgentError, DataError


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("fraction", [0.0, 0.13, 0.2, 0.37, 0.5])
def test_training_rows_are_the_rows_local_data_split_trains_on(seed, fraction):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    y = (rng.random(n) < rng.random()).astype(np.int64)
    rows = np.arange(n, dtype=np.float32)[:, None]           # each row carries its own number
    local = LocalData.split(rows, y, ["row"], fraction, seed)
    mask = training_rows(y.astype(np.int8), fraction, seed)
    np.testing.assert_array_equal(np.flatnonzero(mask), local.X[:, 0].astype(np.int64))
    np.testing.assert_array_equal(np.flatnonzero(~mask), np.sort(local.X_val[:, 0].astype(np.int64)))


class _History:
    created = None


class _FakeFollower:
    """Reports the task as created from the ``after``-th catch-up on (None: never)."""

    def __init__(self, after):
        self.after, self.calls, self.history = after, 0, _History()

    def catch_up(self):
        self.calls += 1
        if self.after is not None and self.calls >= self.after:
            self.history.created = {"configCid": "bafk…", "configDigest": b"\0" * 32}


def test_node_waits_for_its_task_and_says_so_once(capsys):
    follower = _FakeFollower(after=4)
    created = _wait_for_task(follower, 3, "0xREG", 10, wait=30, poll=0.01)
    assert created["configCid"] == "bafk…" and follower.calls == 4
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "task 3 does not exist yet on registry 0xREG; waiting up to 30 s for it to be created (--wait)" in err


def test_node_gives_up_after_the_wait_with_a_clear_error(capsys):
    t = time.monotonic()
    with pytest.raises(AgentError, match=r"task 3 was not created on registry 0xREG within 0.3 s \(no TaskCreated "
                                         r"event at or after block 10\); check --task, --registry and --from-block, "
                                         r"or wait longer with --wait SECONDS"):
        _wait_for_task(_FakeFollower(after=None), 3, "0xREG", 10, wait=0.3, poll=0.05)
    assert 0.3 <= time.monotonic() - t < 5
    with pytest.raises(AgentError, match="within 0 s"):
        _wait_for_task(_FakeFollower(after=None), 3, "0xREG", 10, wait=0, poll=0.05)
    assert capsys.readouterr().err.count("waiting up to") == 1         # --wait 0 prints nothing


def test_a_task_that_exists_is_not_waited_for(capsys):
    assert _wait_for_task(_FakeFollower(after=1), 1, "0xREG", 0, wait=600, poll=1) is not None
    assert capsys.readouterr().err == ""


def test_node_features_must_agree_with_the_task():
    task = ("a", "b")
    _check_features(ReadPlan("y", None), task, 1, "d.csv")                       # nothing chosen: the task's
    _check_features(ReadPlan("y", ("b", "a")), task, 1, "d.csv")                 # same set, any order
    _check_features(ReadPlan("y", ("a", "b", "c"), drop=("c",)), task, 1, "d.csv")
    with pytest.raises(DataError, match=r"task 1 uses the features \['a', 'b'\] but this node's list \(from "
                                        r"features.json\) differs: missing here \['b'\], extra here \['c'\]"):
        _check_features(ReadPlan("y", ("a", "c"), manifest="features.json"), task, 1, "d.csv")
    with pytest.raises(DataError, match=r"task 1 uses column\(s\) \['b'\], which --drop excludes"):
        _check_features(ReadPlan("y", None, drop=("b",)), task, 1, "d.csv")


@pytest.fixture
def node_csv(tmp_path):
    frame = pd.DataFrame({"a": np.arange(40) % 7, "b": np.arange(40) % 3, "label": [0, 1] * 20})
    path = tmp_path / "node.csv"
    frame.to_csv(path, index=False)
    return path


def test_node_run_waits_then_exits_cleanly_when_no_task_appears(chainfl_home, node_csv):
    runner = CliRunner()
    result = runner.invoke(main, ["deploy"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["node", "run", "--account", "1", "--task", "7", "--data", str(node_csv),
                                  "--label", "label", "--wait", "1", "--poll", "0.2"])
    assert result.exit_code == 1, result.output
    assert "task 7 does not exist yet on registry" in result.stderr and "waiting up to 1 s" in result.stderr
    assert "task 7 was not created on registry" in result.output and "--wait SECONDS" in result.output
    assert "Traceback" not in result.output


def test_node_run_checks_the_size_caps_before_connecting(chainfl_home, node_csv):
    result = CliRunner().invoke(main, ["node", "run", "--account", "1", "--task", "7", "--data", str(node_csv),
                                       "--label", "label", "--max-rows", "5", "--rpc", "http://127.0.0.1:9"])
    assert result.exit_code == 1, result.output
    assert "more than 5 data rows" in result.output and "--max-rows N" in result.output


def test_node_stats_json_summary(tmp_path, node_csv):
    out = tmp_path / "s.json"
    result = CliRunner().invoke(main, ["node", "stats", "--data", str(node_csv), "--label", "label", "-o", str(out),
                                       "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary == {"output": str(out), "rows": 40, "training_rows": 32, "validation_rows": 8, "label": "label",
                       "features": ["a", "b"], "not_features": [], "features_file": None, "node": None,
                       "grid_cells": None}
    assert set(json.loads(out.read_text())) == {"feature_names", "log", "count", "sum", "sumsq"}


def test_node_stats_bins_counts_the_training_rows_per_grid_cell(tmp_path, node_csv):
    """--bins adds the grid counts, streamed, equal to those of the rows `node run` trains on; a
    chained task's --model auto then trains newton from them."""
    from chainfl.agents.setup import model_for, newton_config, read_stats
    from chainfl.data.scaling import FeatureStats

    out = tmp_path / "s.json"
    result = CliRunner().invoke(main, ["node", "stats", "--data", str(node_csv), "--label", "label", "-o", str(out),
                                       "--bins", "--account", "1", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["grid_cells"] == 7 + 3          # distinct values of a and b
    stats, node = read_stats(json.loads(out.read_text()))           # signed, grid included
    assert node is not None and stats.grid is not None
    frame = pd.read_csv(node_csv)
    local = LocalData.split(frame[["a", "b"]].to_numpy(np.float32), frame["label"].to_numpy(), ["a", "b"], 0.2, 0)
    assert stats == FeatureStats.compute(local.X, ["a", "b"], with_grid=True)
    assert model_for("chained", "fedavg", [stats]) == "newton"
    assert model_for("chained", "fedavg", [FeatureStats.compute(local.X, ["a", "b"])]) == "mlp"
    assert newton_config([stats]).width == newton_config([stats]).ple.width + 1


def test_a_validation_share_above_half_is_refused_with_the_reason():
    with pytest.raises(Exception, match="no more rows than"):
        LocalData.split(np.zeros((10, 1), np.float32), np.zeros(10, np.int64), ["x"], 0.6, 0)
