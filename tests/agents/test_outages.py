"""Outages lose nothing (issue 11, item 9): a coordinator and three node agents as separate
processes on their own Anvil and IPFS daemon ride out a 30 s stop of the IPFS daemon and a
restart of Anvil (its state saved and loaded) — every process exits 0, every node submits exactly
once per round, and the audit passes. Two processes sending from one account both get through."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time

import pytest

from chainfl import config
from chainfl.audit import audit_task
from chainfl.chain import connect
from chainfl.chain.nodes import LocalNode
from chainfl.chain.registry import Registry
from chainfl.storage import open_store
from chainfl.storage.daemon import IpfsDaemon

from test_multiprocess import _spawn, _wait_for, _write_node_csvs

N_NODES, ROUNDS = 3, 4


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_processes_ride_out_an_ipfs_stop_and_an_anvil_restart(tmp_path):
    settings = config.load_node_settings()
    state = tmp_path / "anvil-state.json"
    port = _port()

    def anvil() -> LocalNode:
        return LocalNode("anvil", settings=settings, port=port, log_dir=tmp_path / "anvil-log",
                         extra_args=("--state", str(state))).start(timeout=60)

    node = anvil()
    daemon = IpfsDaemon(repo_dir=tmp_path / "ipfs-repo", api_port=_port()).start(timeout=90)
    csvs = _write_node_csvs(tmp_path, N_NODES)
    from click.testing import CliRunner

    from chainfl.cli import main

    stats = []
    for k, path in enumerate(csvs):
        out = tmp_path / f"stats{k}.json"
        result = CliRunner().invoke(main, ["node", "stats", "--data", str(path), "--label", "is_fraud", "-o", str(out)])
        assert result.exit_code == 0, result.output
        stats.append(out)
    chain = connect(node.url)
    registry = Registry.deploy(chain, chain.accounts[0])
    chain.close()
    env = dict(os.environ, CHAINFL_HOME=str(tmp_path / "home"), PYTHONUNBUFFERED="1")
    common = ["--rpc", node.url, "--store", daemon.url, "--registry", registry.address]
    task_file = tmp_path / "task.json"
    procs = {}
    try:
        procs["coordinator"] = _spawn(["-v", "coordinator", "run", *common, "--mode", "federated",
                                       "--nodes", N_NODES, *[a for f in stats for a in ("--stats", f)],
                                       "--rounds", ROUNDS, "--strategy", "fedavg", "--epochs", 1, "--hidden", "8",
                                       "--round-seconds", 600, "--reports", tmp_path / "reports",
                                       "--task-file", task_file, "--poll", 0.3, "--timeout", 600, "--json"],
                                      tmp_path / "coordinator.log", env)
        info = _wait_for(lambda: task_file.exists() and json.loads(task_file.read_text()), 120, "the task",
                         procs["coordinator"], tmp_path / "coordinator.log")
        task_id = info["task_id"]
        for k in range(N_NODES):
            procs[k] = _spawn(["-v", "node", "run", *common, "--account", k + 1, "--task", task_id,
                               "--data", csvs[k], "--label", "is_fraud", "--reports", tmp_path / "reports",
                               "--poll", 0.3, "--timeout", 600, "--from-block", info["from_block"]],
                              tmp_path / f"node{k}.log", env)

        def round_is(r):
            try:
                with connect(node.url) as c:
                    return Registry.at(c, registry.address).task(task_id).round >= r
            except Exception:
                return False

        _wait_for(lambda: round_is(2), 240, "round 2", procs["coordinator"], tmp_path / "coordinator.log")
        daemon.stop()                                   # 1. the IPFS daemon is gone for 30 s
        time.sleep(30)
        daemon.start(timeout=90)
        _wait_for(lambda: round_is(3), 240, "round 3", procs["coordinator"], tmp_path / "coordinator.log")
        node.stop()                                     # 2. Anvil restarts, its state saved and reloaded
        time.sleep(5)
        node = anvil()
        for name, p in procs.items():
            log = tmp_path / ("coordinator.log" if name == "coordinator" else f"node{name}.log")
            assert p.wait(400) == 0, log.read_text()[-3000:]
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
    logs = "".join((tmp_path / f).read_text() for f in ["coordinator.log"] + [f"node{k}.log" for k in range(N_NODES)])
    assert "retrying for up to" in logs and "reachable again" in logs      # the outages were seen and ridden out
    with connect(node.url) as c:
        reg = Registry.at(c, registry.address)
        subs = [(e.args["round"], e.args["node"]) for e in reg.events(info["from_block"], None, task_id=task_id,
                                                                       names=["UpdateSubmitted"])]
        nodes = {c.account(k + 1).address for k in range(N_NODES)}
        assert reg.task(task_id).closed
        assert len(subs) == len(set(subs)) == N_NODES * ROUNDS
        assert set(subs) == {(r, n) for r in range(1, ROUNDS + 1) for n in nodes}
        report = audit_task(c, reg, open_store(daemon.url), task_id, from_block=info["from_block"])
        assert report.ok, [str(v) for v in report.violations]
    daemon.stop()
    node.stop()


def test_two_processes_sending_from_one_account_both_get_through(anvil_url):
    """Each connection keeps its own nonce counter (as two processes do): the clash ("nonce too
    low", "replacement transaction underpriced") is re-synced and retried, nothing is lost."""
    first, second = connect(anvil_url), connect(anvil_url)
    sender = first.account(30)
    second.account(30)
    target = first.account(31).address
    before = first.w3.eth.get_transaction_count(sender.address)
    errors = []

    def send(chain):
        try:
            for _ in range(5):
                chain.send_ether(sender, target, 1)
        except Exception as e:        # any failure is the test's failure
            errors.append(e)

    threads = [threading.Thread(target=send, args=(c,)) for c in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert first.w3.eth.get_transaction_count(sender.address) == before + 10
    first.close()
    second.close()
