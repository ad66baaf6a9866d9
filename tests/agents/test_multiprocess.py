"""A coordinator and 5 node agents as separate processes on real Anvil and a real IPFS daemon;
one agent is SIGKILLed mid-run and restarted. No duplicate or missing submission; the audit passes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sklearn.datasets import make_classification

from chainfl.audit import audit_task
from chainfl.chain import connect
from chainfl.chain.registry import Registry
from chainfl.cli import main
from chainfl.storage import open_store

N_NODES, ROUNDS = 5, 3
CLI = [sys.executable, "-c", "from chainfl.cli import main; main()"]


def _write_node_csvs(tmp_path, n_nodes: int = N_NODES) -> list:
    X, y = make_classification(n_samples=1000, n_features=6, n_informative=4, weights=[0.8], class_sep=1.5,
                               random_state=1)
    paths = []
    for k, idx in enumerate(np.array_split(np.arange(1000), n_nodes)):
        frame = pd.DataFrame(X[idx] * 10, columns=[f"f{i}" for i in range(6)])
        frame["is_fraud"] = y[idx]
        path = tmp_path / f"node{k}.csv"
        frame.to_csv(path, index=False)
        paths.append(path)
    return paths


def _spawn(args, log_path, env):
    log = open(log_path, "ab")
    return subprocess.Popen(CLI + [str(a) for a in args], stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)


def _wait_for(predicate, timeout: float, what: str, proc=None, log=None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process exited ({proc.returncode}) before {what}: "
                                 f"{log.read_text()[-3000:] if log else ''}")
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_coordinator_and_five_agent_processes_survive_a_killed_agent(anvil_url, ipfs_url, tmp_path):
    csvs = _write_node_csvs(tmp_path)
    runner = CliRunner()
    stats = []
    for k, path in enumerate(csvs):
        out = tmp_path / f"stats{k}.json"
        result = runner.invoke(main, ["node", "stats", "--data", str(path), "--label", "is_fraud", "-o", str(out)])
        assert result.exit_code == 0, result.output
        stats.append(out)
    assert set(json.loads(stats[0].read_text())) == {"feature_names", "log", "count", "sum", "sumsq"}

    chain = connect(anvil_url)
    registry = Registry.deploy(chain, chain.accounts[0])
    env = dict(os.environ, CHAINFL_HOME=str(tmp_path / "home"), PYTHONUNBUFFERED="1")
    common = ["--rpc", anvil_url, "--store", ipfs_url, "--registry", registry.address]
    reports = tmp_path / "reports"
    task_file = tmp_path / "task.json"
    procs = {}
    try:
        procs["coordinator"] = _spawn(["-v", "coordinator", "run", *common, "--mode", "federated",
                                       "--nodes", N_NODES, *[a for f in stats for a in ("--stats", f)], "--rounds", ROUNDS,
                                       "--strategy", "screened-fedavg", "--epochs", 1, "--hidden", "8",
                                       "--round-seconds", 120, "--reports", reports, "--task-file", task_file,
                                       "--poll", 0.3, "--timeout", 240, "--json"],
                                      tmp_path / "coordinator.log", env)
        info = _wait_for(lambda: task_file.exists() and json.loads(task_file.read_text()), 120, "the task",
                         procs["coordinator"], tmp_path / "coordinator.log")
        task_id = info["task_id"]

        def node_args(k):
            return ["-v", "node", "run", *common, "--account", k + 1, "--task", task_id,
                    "--data", csvs[k], "--label", "is_fraud", "--reports", reports, "--poll", 0.3,
                    "--timeout", 240, "--from-block", info["from_block"]]

        for k in range(N_NODES):
            procs[k] = _spawn(node_args(k), tmp_path / f"node{k}.log", env)

        # kill node 2 (SIGKILL) as soon as round 2 is open, then restart it
        _wait_for(lambda: registry.task(task_id).round >= 2, 150, "round 2", procs["coordinator"],
                  tmp_path / "coordinator.log")
        os.killpg(procs[2].pid, signal.SIGKILL)
        procs[2].wait(10)
        killed_in_round = registry.task(task_id).round
        procs[2] = _spawn(node_args(2), tmp_path / "node2.log", env)

        assert procs["coordinator"].wait(240) == 0, (tmp_path / "coordinator.log").read_text()[-3000:]
        for k in range(N_NODES):
            assert procs[k].wait(60) == 0, (tmp_path / f"node{k}.log").read_text()[-3000:]
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)

    task = registry.task(task_id)
    subs = [e.args for e in registry.events(info["from_block"], None, task_id=task_id, names=["UpdateSubmitted"])]
    finals = [e.args for e in registry.events(info["from_block"], None, task_id=task_id, names=["RoundFinalized"])]
    nodes = [chain.account(k + 1).address for k in range(N_NODES)]
    pairs = [(s["round"], s["node"]) for s in subs]
    assert task.closed and task.round == ROUNDS and killed_in_round >= 2
    assert len(pairs) == len(set(pairs)) == N_NODES * ROUNDS                 # none twice, none missing
    assert set(pairs) == {(r, n) for r in range(1, ROUNDS + 1) for n in nodes}
    assert [f["round"] for f in finals] == list(range(1, ROUNDS + 1))
    summary = _last_json((tmp_path / "coordinator.log").read_text())
    assert summary["closed"] and summary["reported_nodes"] == N_NODES
    report = audit_task(chain, registry, open_store(ipfs_url), task_id, from_block=info["from_block"])
    assert report.ok, [str(v) for v in report.violations]
    chain.close()


def _last_json(text: str) -> dict:
    start = text.rindex("\n{") + 1
    return json.loads(text[start:text.index("\n}", start) + 2])
