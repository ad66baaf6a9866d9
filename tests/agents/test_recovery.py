"""Crash/resume, revert survival and tampered blobs: the agents derive what to do from chain state."""

import time

import pytest

from chainfl.agents import modelio
from chainfl.agents.node import NodeAgent
from chainfl.errors import IntegrityError
from chainfl.storage.codec import fetch_verified


class Crash(RuntimeError):
    pass


class CrashingAgent(NodeAgent):
    """Dies after storing its result and before submitting it (the worst moment)."""

    stored = None

    def _before_submit(self, stored):
        type(self).stored = stored
        raise Crash("killed between store and submit")


@pytest.mark.parametrize("mode", ["chained", "federated"])
def test_restarted_agent_submits_exactly_once_with_the_same_bytes(world, mode):
    coordinator = world.coordinator()
    task_id = coordinator.create_task(world.spec(mode, rounds=1))
    coordinator.step()                                   # federated: opens round 1
    crashing = world.agent(0, task_id, cls=CrashingAgent)

    with pytest.raises(Crash):
        crashing.step()
    name = "HandoffRecorded" if mode == "chained" else "UpdateSubmitted"
    assert world.events(task_id, name) == []             # nothing reached the chain
    assert world.store.has(CrashingAgent.stored.cid)      # but the result was stored

    # a new agent object (a restarted process) works out from chain state what is left
    restarted = world.agent(0, task_id)
    assert restarted.step() in ("handoff", "submitted")
    assert restarted.step() == "idle"                    # and does not do it twice
    others = [world.agent(i, task_id) for i in (1, 2)]
    world.drive(coordinator, [restarted] + others)

    events = world.events(task_id, name)
    by_node = [e["node"] for e in events]
    assert sorted(by_node) == sorted(a.address for a in world.accounts)     # none missing, none twice
    mine = [e for e in events if e["node"] == world.accounts[0].address][0]
    assert mine["digest"] == CrashingAgent.stored.digest and mine["cid"] == CrashingAgent.stored.cid


class LateAgent(NodeAgent):
    """Its training outlasts the round: the chain's clock passes the deadline before it submits."""

    def _before_submit(self, stored):
        self.chain.advance_time(self.spec.round_seconds + 5)


def test_a_reverted_late_submission_is_survived_and_the_others_finish(world):
    coordinator = world.coordinator()
    task_id = coordinator.create_task(world.spec("federated", rounds=2))
    coordinator.step()
    others = [world.agent(i, task_id) for i in (1, 2)]
    for a in others:
        assert a.step() == "submitted"
    late = world.agent(0, task_id, cls=LateAgent)
    assert late.step() == "reverted"                     # deadline passed while it trained

    assert coordinator.step() == "finalized"             # deadline passed, two updates in
    fresh = world.agent(0, task_id)                      # the late node, restarted, joins round 2
    world.drive(coordinator, [fresh] + others)

    subs = world.events(task_id, "UpdateSubmitted")
    assert sorted((s["round"], s["node"]) for s in subs) == sorted(
        [(1, a.address) for a in world.accounts[1:]] + [(2, a.address) for a in world.accounts])
    assert world.events(task_id, "RoundFinalized")[0]["included"] == sorted(
        (a.address for a in world.accounts[1:]), key=lambda a: int(a, 16))


class SkippedWhileTraining(NodeAgent):
    coordinator = None

    def _before_submit(self, stored):
        task = self.registry.task(self.task_id)
        self.registry.skip_turn(self.task_id, self.spec.next_node(task.expected), self.coordinator.account)


def test_agent_whose_turn_was_skipped_meanwhile_does_not_submit(world):
    coordinator = world.coordinator()
    task_id = coordinator.create_task(world.spec("chained", rounds=1))
    SkippedWhileTraining.coordinator = coordinator
    slow = world.agent(0, task_id, cls=SkippedWhileTraining)

    assert slow.step() == "stale"
    assert world.events(task_id, "HandoffRecorded") == []
    assert world.events(task_id, "TurnSkipped")[0]["skipped"] == world.accounts[0].address
    nxt = world.agent(1, task_id)
    assert nxt.step() == "handoff"                       # the chain went on without it


def test_a_blob_that_does_not_match_its_digest_is_rejected_on_chain_and_never_loaded(world):
    coordinator = world.coordinator()
    spec = world.spec("chained", rounds=1)
    task_id = coordinator.create_task(spec)
    initial = world.registry.task(task_id).head
    # node 0 records digest A but points the CID at other bytes B (a tampered / swapped blob)
    a = modelio.put_model(world.store, modelio.initial_state(spec), {"kind": "handoff", "note": "A"})
    b = modelio.put_model(world.store, modelio.initial_state(spec), {"kind": "handoff", "note": "B"})
    world.registry.record_handoff(task_id, initial, a.digest, b.cid, 10, 0.5, world.accounts[1].address,
                                  world.accounts[0])
    with pytest.raises(IntegrityError):
        fetch_verified(world.store, b.cid, a.digest)

    receiver = world.agent(1, task_id)
    assert receiver.step() == "rejected+handoff"

    rejected = world.events(task_id, "HandoffRejected")
    assert len(rejected) == 1
    assert rejected[0]["node"] == world.accounts[1].address
    assert rejected[0]["producer"] == world.accounts[0].address
    assert rejected[0]["digest"] == a.digest and "verification" in rejected[0]["reason"]
    handoff = world.events(task_id, "HandoffRecorded")[-1]
    assert handoff["node"] == world.accounts[1].address and handoff["parent"] == initial


def _handoff_from_elsewhere(world, tmp_path, note: str, **spec_kw):
    """Node 0 records a handoff whose blob is only in a store the receiver cannot reach."""
    from chainfl.storage import open_store

    spec = world.spec("chained", rounds=1, **spec_kw)
    task_id = world.coordinator().create_task(spec)
    initial = world.registry.task(task_id).head
    elsewhere = open_store((tmp_path / "elsewhere").as_uri())
    a = modelio.put_model(elsewhere, modelio.initial_state(spec),
                          {"kind": "handoff", "task": task_id, "node": world.accounts[0].address, "step": 0,
                           "note": note})
    world.registry.record_handoff(task_id, initial, a.digest, a.cid, 10, 0.5, world.accounts[1].address,
                                  world.accounts[0])
    return task_id, elsewhere, a


def test_an_incoming_blob_not_yet_retrievable_is_retried_not_rejected(world, tmp_path):
    task_id, elsewhere, a = _handoff_from_elsewhere(world, tmp_path, "late")
    patient = world.agent(1, task_id, fetch_timeout=0.5)
    assert patient.step() == "waiting"                       # a slow network is not poisoning
    world.chain.advance_time(30)                             # half the task's fetch patience (60 s)
    assert patient.step() == "waiting"
    assert world.events(task_id, "HandoffRejected") == []

    world.store.put(elsewhere.get(a.cid))                    # the blob arrives
    assert patient.step() == "handoff"                       # accepted, trained on, handed over
    assert world.events(task_id, "HandoffRejected") == []
    assert world.events(task_id, "HandoffRecorded")[-1]["parent"] == a.digest


def test_an_incoming_blob_missing_past_the_patience_window_is_rejected(world, tmp_path):
    task_id, _, _ = _handoff_from_elsewhere(world, tmp_path, "never", fetch_patience=20, turn_seconds=40)
    receiver = world.agent(1, task_id, fetch_timeout=0.5)
    assert receiver.step() == "waiting"
    world.chain.advance_time(21)                             # chain time: a restarted agent sees the same
    restarted = world.agent(1, task_id, fetch_timeout=0.5)
    assert restarted.step() == "rejected+handoff"            # it never trains on the unverified head
    rejected = world.events(task_id, "HandoffRejected")
    assert len(rejected) == 1 and rejected[0]["reason"] == "unavailable: blob did not resolve within 20 s"
    assert world.events(task_id, "HandoffRecorded")[-1]["parent"] == world.registry.task(task_id).accepted


def test_a_handoff_copied_from_another_node_is_rejected(world):
    """Node 0 hands on node 1's blob as its own (its meta names node 1): the receiver refuses it."""
    coordinator = world.coordinator()
    spec = world.spec("chained", rounds=1)
    task_id = coordinator.create_task(spec)
    initial = world.registry.task(task_id).head
    theirs = modelio.put_model(world.store, modelio.initial_state(spec),
                               {"kind": "handoff", "task": task_id, "node": world.accounts[1].address, "step": 0})
    world.registry.record_handoff(task_id, initial, theirs.digest, theirs.cid, 10, 0.5, world.accounts[1].address,
                                  world.accounts[0])
    assert world.agent(1, task_id).step() == "rejected+handoff"
    (rejected,) = world.events(task_id, "HandoffRejected")
    assert rejected["reason"].startswith("copy: ") and rejected["producer"] == world.accounts[0].address


def test_a_handoff_claiming_more_rows_than_committed_is_rejected(world):
    coordinator = world.coordinator()
    spec = world.spec("chained", rounds=1)
    task_id = coordinator.create_task(spec)
    initial = world.registry.task(task_id).head
    mine = modelio.put_model(world.store, modelio.initial_state(spec),
                             {"kind": "handoff", "task": task_id, "node": world.accounts[0].address, "step": 0})
    committed = spec.committed_samples(world.accounts[0].address)
    world.registry.record_handoff(task_id, initial, mine.digest, mine.cid, committed + 1, 0.5,
                                  world.accounts[1].address, world.accounts[0])
    assert world.agent(1, task_id).step() == "rejected+handoff"
    (rejected,) = world.events(task_id, "HandoffRejected")
    assert rejected["reason"] == f"samples: claims {committed + 1} training rows, but committed {committed} in its " \
                                 f"statistics"


def test_coordinator_skips_an_unresponsive_node_and_finishes_without_it(world):
    coordinator = world.coordinator(report_timeout=2)
    task_id = coordinator.create_task(world.spec("chained", rounds=1, turn_seconds=30, fetch_patience=10))
    present = [world.agent(i, task_id) for i in (1, 2)]        # node 0 is offline all along

    assert coordinator.step() == "waiting"
    world.chain.advance_time(31)                               # turns are timed in chain time
    assert coordinator.step() == "skipped"
    skipped = world.events(task_id, "TurnSkipped")
    assert [(s["skipped"], s["next"]) for s in skipped] == [(world.accounts[0].address, world.accounts[1].address)]
    for _ in range(3):                                       # nodes 1, 2 train; node 0's turn again
        for a in present:
            a.step()
    # nodes 1 and 2 made 2 handoffs; node 0 (offline) is expected again: skipped again after the timeout
    assert [h["node"] for h in world.events(task_id, "HandoffRecorded")] == [a.address for a in world.accounts[1:]]
    for _ in range(40):
        if coordinator.step() == "done":
            break
        world.chain.advance_time(31)
        for a in present:
            a.step()
        time.sleep(0.1)                                      # the wait for the offline node's report
    task = world.registry.task(task_id)
    assert task.closed and task.seq == 3
    handoffs = world.events(task_id, "HandoffRecorded")
    assert world.accounts[0].address not in {h["node"] for h in handoffs}
    assert coordinator.reported_nodes == 2                  # the offline node sent no histogram
