"""Peer validation on chain: nodes score each other's updates and sign the scores; the
coordinator leaves out (without blame) the updates its peers' medians call worse, records the
reports as the round's evidence, and the audit re-decides every round from exactly them."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from chainfl.agents.peerreports import (PeerReport, evidence_blob, parse_evidence, peer_spec, row_problem,
                                        verified_peer_reports)
from chainfl.aggregation.attacks import AttackConfig
from chainfl.audit import audit_task
from chainfl.errors import ConfigError

from chainfl.agents.reports import DirectoryReportBox

from tests.agents.conftest import PAIRS, make_world

N = 6
FLIPPER = 5


def _spec(world, rounds=2, **peer):
    return world.spec("federated", rounds=rounds, strategy="fedavg",
                      peer={"tolerance": 0.5, "seconds": 30, **peer})


def _agents(world, task_id, attack=True):
    return [world.agent(i, task_id, attack=AttackConfig("label-flip", 1 / N) if attack and i == FLIPPER else None)
            for i in range(N)]


@pytest.fixture
def peer_world(tmp_path):
    w = make_world(tmp_path, N, rows=2400)
    yield w
    w.chain.close()


@pytest.fixture(params=PAIRS, ids=[f"{c}+{s}" for c, s in PAIRS])
def peer_backend_world(request, tmp_path):
    """The 6-node world on each backend pair (the embedded chain, Ganache, Anvil with the IPFS daemon)."""
    chain, store = request.param
    chain_url = "eth-tester://memory" if chain == "eth-tester" else request.getfixturevalue(f"{chain}_url")
    w = make_world(tmp_path, N, rows=2400, chain_url=chain_url,
                   store_url=request.getfixturevalue("ipfs_url") if store == "ipfs" else None)
    yield w
    w.chain.close()


def _rounds(world, task_id):
    return [e for e in world.events(task_id, "RoundFinalized")]


def test_a_lying_label_flipper_is_left_out_by_its_peers_and_the_audit_agrees(peer_backend_world):
    world = peer_backend_world
    coordinator = world.coordinator()
    spec = _spec(world)
    task_id = coordinator.create_task(spec)
    world.drive(coordinator, _agents(world, task_id))

    bad = world.accounts[FLIPPER].address
    rounds = _rounds(world, task_id)
    assert len(rounds) == 2
    for ev in rounds:
        assert bad in ev["excluded"] and bad not in ev["included"], ev
        assert len(ev["included"]) == N - 1
        assert any(bytes(ev["evidenceDigest"]))                  # the reports it decided from, on chain
        _, _, _, reports = parse_evidence(world.store.get(ev["evidenceCid"]))
        assert len(reports) == N                                  # every node, the liar included
    assert not world.events(task_id, "UpdateFlagged")             # left out, not blamed
    assert coordinator.round_log[1]["peer_excluded"] == [bad]
    report = audit_task(world.chain, world.registry, world.store, task_id)
    assert report.ok, report.violations
    assert not report.findings                                   # exclusion by peers carries no blame
    assert all(a["match"] and a["peer_reports"] == N and a["peer_excluded"] == [bad] for a in report.aggregates)


def test_the_audit_re_decides_from_the_evidence_and_catches_a_coordinator_that_ignores_it(peer_world, monkeypatch):
    """A coordinator that records the reports as evidence but decides as if nobody had reported."""
    import chainfl.agents.coordinator as C

    world = peer_world
    real = C.decide_round
    monkeypatch.setattr(C, "decide_round", lambda *a, peer=None, **kw: real(*a, **kw))
    coordinator = world.coordinator()
    task_id = coordinator.create_task(_spec(world, rounds=1))
    world.drive(coordinator, _agents(world, task_id))
    monkeypatch.setattr(C, "decide_round", real)

    bad = world.accounts[FLIPPER].address
    assert bad in _rounds(world, task_id)[0]["included"]
    report = audit_task(world.chain, world.registry, world.store, task_id)
    assert not report.ok
    kinds = {v.kind for v in report.violations}
    assert {"included-inconsistent", "excluded-inconsistent"} <= kinds, report.violations


def test_a_silent_reporter_delays_the_round_by_peer_seconds_only(peer_world):
    """Liveness: a node that never reports (crashed after submitting) does not hang the round."""
    world = peer_world
    coordinator = world.coordinator()
    task_id = coordinator.create_task(_spec(world, rounds=1, seconds=30))
    agents = _agents(world, task_id, attack=False)
    agents[0]._peer_report = lambda task, r: "idle"
    waited = 0
    for _ in range(60):
        state = coordinator.step()
        if state == "done":
            break
        for a in agents:
            a.step()
        if state == "waiting" and world.registry.task(task_id).round_submissions == N:
            waited += 1
            world.chain.advance_time(11)                 # chain time: 30 s pass in three waits
    assert world.registry.task(task_id).closed
    assert 2 <= waited <= 4
    ev = _rounds(world, task_id)[0]
    _, _, _, reports = parse_evidence(world.store.get(ev["evidenceCid"]))
    assert {r.node for r in reports} == {a.address for a in agents[1:]}
    assert audit_task(world.chain, world.registry, world.store, task_id).ok


def test_reports_that_cannot_be_honest_are_left_out(peer_world):
    world = peer_world
    spec = _spec(world)
    a0, a1, a2 = world.accounts[:3]
    base, cand = "0x" + "11" * 32, "0x" + "22" * 32
    row = [0.01, 1.0, 0.02, 3.0, -0.01, 20.0]

    def rep(account, scores, round_=1, b=base, node=None):
        return PeerReport(7, round_, b, node or account.address, scores).signed(account) if node is None else \
            replace(PeerReport(7, round_, b, account.address, scores).signed(account), node=node)

    good = rep(a0, {cand: row})
    assert verified_peer_reports([good], spec, 7, 1, base) == [good]
    assert verified_peer_reports([rep(a0, {cand: row}, round_=2)], spec, 7, 1, base) == []       # another round
    assert verified_peer_reports([rep(a0, {cand: row}, b="0x" + "33" * 32)], spec, 7, 1, base) == []  # another model
    assert verified_peer_reports([rep(a1, {cand: row}, node=a2.address)], spec, 7, 1, base) == []   # forged signer
    for broken in ([float("nan")] + row[1:], [2.0] + row[1:], row[:5], [0.0, 1.0, 0.0, 0.0, 0.0, 5.0],
                   row[:3] + [2.5] + row[4:], row[:5] + [10**9]):
        try:
            bad = rep(a0, {cand: broken})
        except ConfigError:                    # NaN: no canonical body to sign; sent with a copied signature
            bad = replace(good, scores={cand: broken})
        assert verified_peer_reports([bad], spec, 7, 1, base) == [], broken
    assert verified_peer_reports([rep(a0, {"0xnot-a-digest": row})], spec, 7, 1, base) == []
    assert verified_peer_reports([rep(a0, {"0x" + "AB" * 32: row})], spec, 7, 1, base) == []     # upper case
    assert verified_peer_reports([rep(a0, {cand: row[:2] + [99.0] + row[3:]})], spec, 7, 1, base) == []  # > ±51 nats
    huge = replace(good, scores={cand: [10**400] + row[1:]})        # unsigned, and no float can hold it
    assert verified_peer_reports([huge], spec, 7, 1, base) == []
    outsider = world.chain.account(N + 3)
    assert verified_peer_reports([rep(outsider, {cand: row})], spec, 7, 1, base) == []
    # of several reports of one node, the one covering the most candidates, whatever the order
    more = rep(a0, {cand: row, "0x" + "44" * 32: row})
    assert verified_peer_reports([good, more], spec, 7, 1, base) == [more]
    assert verified_peer_reports([more, good], spec, 7, 1, base) == [more]
    assert row_problem(row, committed=10) is not None and row_problem(row, committed=None) is None
    # evidence round-trips
    task, r, b, reports = parse_evidence(evidence_blob(7, 1, base, spec.peer, [more]))
    assert (task, r, b, reports) == (7, 1, base, [more])


def test_peer_validation_is_for_federated_network_tasks(peer_world):
    world = peer_world
    with pytest.raises(ConfigError, match="federated network"):
        world.spec("chained", rounds=1, peer={})
    with pytest.raises(ConfigError, match="label consistency"):
        world.spec("federated", rounds=None, model_kind="gbdt", strategy="screened-sum", peer={})
    with pytest.raises(ConfigError, match="peer seconds"):
        peer_spec({"seconds": 0})
    with pytest.raises(ConfigError, match="unknown peer"):
        peer_spec({"tolerence": 1})
    assert world.spec("federated", rounds=1).peer == {}
    spec = _spec(world)
    assert spec.peer["metric"] == "loss" and spec.peer["tolerance"] == 0.5 and spec.peer["seconds"] == 30
    assert peer_spec({"metric": "auc+loss"})["metric"] == "auc+loss" and peer_spec({})["tolerance"] == 3.0


def test_run_config_peer_metric_needs_peer_and_a_known_metric():
    from click.testing import CliRunner

    from chainfl.agents.runner import RunConfig
    from chainfl.cli import main

    with pytest.raises(ConfigError, match="add --peer"):
        RunConfig(mode="federated", model="mlp", peer_metric="auc")
    assert RunConfig(mode="federated", model="mlp", peer=True, peer_metric="auc+loss").peer_metric == "auc+loss"
    out = CliRunner().invoke(main, ["run", "--mode", "federated", "--peer", "--peer-metric", "median"])
    assert out.exit_code != 0 and "auc+loss" in out.output


def test_peer_reports_travel_through_a_shared_directory(peer_world, tmp_path):
    world = peer_world
    box = DirectoryReportBox(tmp_path / "reports")
    base, cand = "0x" + "11" * 32, "0x" + "22" * 32
    mine = PeerReport(3, 2, base, world.accounts[0].address, {cand: [0.0, 0.0, 0.1, 2.0, 0.0, 0.0]}).signed(
        world.accounts[0])
    box.put_peer(mine)
    box.put_peer(mine)                                  # the same report twice is one file
    folder = tmp_path / "reports" / "task-3"
    (folder / "peer-2-0xjunk-1.json").write_text("{not json")
    (folder / "peer-2-0xdeep-1.json").write_text("[" * 100_000)         # would crash the C parser
    os.mkfifo(folder / "peer-2-0xfifo-1.json")                          # would block a reader
    (folder / "peer-3").write_text("squatting a folder name")           # no folder is needed
    box.put_peer(replace(mine, round=3).signed(world.accounts[0]))
    assert box.peer_reports(3, 2) == [mine] and box.peer_reports(3, 1) == [] and box.reports(3) == []
    assert len(box.peer_reports(3, 3)) == 1


def test_a_node_without_validation_rows_sends_an_empty_report_and_the_round_does_not_wait(peer_world):
    import numpy as np

    world = peer_world
    d = world.datas[0]
    world.datas[0] = replace(d, X_val=np.zeros((0, d.X.shape[1]), np.float32), y_val=np.zeros(0, np.int64))
    coordinator = world.coordinator()
    task_id = coordinator.create_task(_spec(world, rounds=1, seconds=10_000))   # waiting would hang the test
    world.drive(coordinator, _agents(world, task_id, attack=False), max_steps=60)
    ev = _rounds(world, task_id)[0]
    _, _, _, reports = parse_evidence(world.store.get(ev["evidenceCid"]))
    empty = [r for r in reports if r.node == world.accounts[0].address]
    assert len(reports) == N and len(empty) == 1 and empty[0].scores == {}
    assert audit_task(world.chain, world.registry, world.store, task_id).ok


def test_a_late_submission_gets_its_own_window_and_is_scored(peer_world):
    """Quorum below the node count: an update sent late (while the coordinator waits for a report
    its sender withholds) is not decided on unscored; it gets a full window and its peers' scores."""
    world = peer_world
    coordinator = world.coordinator()
    task_id = coordinator.create_task(replace(_spec(world, rounds=1, seconds=30), quorum=N - 1))
    agents = _agents(world, task_id)
    late, honest = agents[FLIPPER], agents[:FLIPPER]
    late._peer_report = lambda task, r: "idle"          # withholds its report: the coordinator waits

    def spin(times=6):
        for _ in range(times):
            coordinator.step()
            for a in honest:
                a.step()

    spin()
    assert world.registry.task(task_id).round_submissions == N - 1 and world.registry.task(task_id).round_open
    world.chain.advance_time(25)
    assert late.step() == "submitted"                   # 25 s into the window
    spin()
    world.chain.advance_time(10)                        # 35 s after the quorum, 10 s after the late one
    spin(2)
    assert world.registry.task(task_id).round_open      # the late update's window is still running
    world.chain.advance_time(25)
    world.drive(coordinator, honest + [late], max_steps=40)
    ev = _rounds(world, task_id)[0]
    assert late.address in ev["excluded"] and len(ev["included"]) == N - 1
    assert audit_task(world.chain, world.registry, world.store, task_id).ok


def test_nodes_score_a_round_that_ends_at_its_deadline_on_a_chain_without_new_blocks(peer_world):
    """A node is silent, so the round ends at its deadline; the embedded chain mines no block
    meanwhile, so only the wall clock passes the deadline — the nodes must still score."""
    import time

    world = peer_world
    coordinator = world.coordinator()
    task_id = coordinator.create_task(replace(_spec(world, rounds=1, seconds=2), round_seconds=8))
    agents = _agents(world, task_id)[1:]                 # node 0 never shows up
    start = time.monotonic()
    while not _rounds(world, task_id) and time.monotonic() - start < 60:
        coordinator.step()
        for a in agents:
            a.step()
        time.sleep(0.2)
    ev = _rounds(world, task_id)[0]
    assert world.registry.task(task_id).round_submissions == N - 1
    _, _, _, reports = parse_evidence(world.store.get(ev["evidenceCid"]))
    assert len(reports) == N - 1                          # every node that is up scored the round
    assert world.accounts[FLIPPER].address in ev["excluded"]
