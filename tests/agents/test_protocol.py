"""The protocol under attack: one member with its own client and key (or a crash at a bad moment)
cannot stall, capture or quietly poison a task. Each test is an attack that used to work (issue
11, items 1-8 and 10), run against real daemons — Anvil and the IPFS daemon — where the attack
needs them; outages (item 9) are in test_outages.py."""

from __future__ import annotations

import os

import pytest

from chainfl.agents import modelio
from chainfl.agents.coordinator import Coordinator
from chainfl.agents.node import INFLATED_SAMPLES, NodeAgent
from chainfl.agents.retry import Backoff
from chainfl.agents.setup import build_spec
from chainfl.aggregation.attacks import AttackConfig
from chainfl.aggregation.decision import reason_code
from chainfl.audit import audit_task
from chainfl.errors import StoreUnavailableError

from conftest import make_world


@pytest.fixture
def anvil_ipfs(tmp_path, anvil_url, ipfs_url):
    w = make_world(tmp_path, n=4, rows=800, chain_url=anvil_url, store_url=ipfs_url)
    yield w
    w.chain.close()


@pytest.fixture
def anvil_file(tmp_path, anvil_url):
    w = make_world(tmp_path, n=4, rows=800, chain_url=anvil_url)
    yield w
    w.chain.close()


def attacker(kind: str) -> AttackConfig:
    return AttackConfig(kind=kind)


def failed_txs(chain, sender: str, from_block: int) -> int:
    """Transactions from ``sender`` mined with status 0 since ``from_block`` (gas burnt on reverts)."""
    failed = 0
    for n in range(from_block, chain.block_number() + 1):
        block = chain.w3.eth.get_block(n, full_transactions=True)
        for tx in block["transactions"]:
            if tx["from"].lower() == sender.lower() and chain.w3.eth.get_transaction_receipt(tx["hash"])["status"] == 0:
                failed += 1
    return failed


def audit(w, task_id):
    report = audit_task(w.chain, w.registry, w.store, task_id)
    assert report.ok, [str(v) for v in report.violations]
    return report


# --- 1. copy -------------------------------------------------------------------------------------
def test_a_copied_update_is_flagged_before_aggregation_and_every_round_finalizes(anvil_ipfs):
    w = anvil_ipfs
    coordinator = w.coordinator(fetch_timeout=2)
    task_id = coordinator.create_task(w.spec("federated", rounds=2, strategy="fedavg"))
    copier = w.accounts[3].address
    agents = [w.agent(i, task_id) for i in range(3)] + [w.agent(3, task_id, attack=attacker("copy"))]
    w.drive(coordinator, agents)

    subs = w.events(task_id, "UpdateSubmitted")
    copied = [s for s in subs if s["node"] == copier]
    assert len(copied) == 2 and all(any(c["digest"] == s["digest"] for s in subs if s["node"] != copier)
                                    for c in copied)      # byte-for-byte someone else's update
    flags = w.events(task_id, "UpdateFlagged")
    assert {(f["round"], f["node"]) for f in flags} == {(1, copier), (2, copier)}
    assert all(reason_code(f["reason"]) == "copy" for f in flags)
    finals = w.events(task_id, "RoundFinalized")
    honest = sorted((a.address for a in w.accounts[:3]), key=lambda a: int(a, 16))
    assert [f["included"] for f in finals] == [honest, honest]
    report = audit(w, task_id)
    assert report.misbehaving() == {copier: {"flagged:copy": 2}}


# --- 2. empty round ------------------------------------------------------------------------------
def test_a_round_nobody_submits_to_is_abandoned_and_the_task_goes_on(anvil_file):
    w = anvil_file
    start = w.chain.block_number()
    coordinator = w.coordinator()
    task_id = coordinator.create_task(w.spec("federated", rounds=2, strategy="fedavg", round_seconds=30))
    assert coordinator.step() == "opened"
    assert coordinator.step() == "waiting"               # every agent is down
    w.chain.advance_time(31)
    assert coordinator.step() == "abandoned"
    late = w.agent(0, task_id)
    assert late.step() == "idle"                          # nothing to submit to: no revert either
    (abandoned,) = w.events(task_id, "RoundAbandoned")
    assert abandoned["round"] == 1 and abandoned["reason"] == "no update was submitted"
    assert coordinator.step() == "opened"                 # round 2, on the same global model
    assert w.registry.task(task_id).head == abandoned["globalModel"]
    w.drive(coordinator, [late] + [w.agent(i, task_id) for i in (1, 2, 3)])

    task = w.registry.task(task_id)
    assert task.closed and task.round == 3                # 1 abandoned + 2 finalized
    assert [f["round"] for f in w.events(task_id, "RoundFinalized")] == [2, 3]
    assert failed_txs(w.chain, w.coordinator_account.address, start) == 0
    report = audit(w, task_id)
    assert report.counts["abandoned"] == 1 and any(f.kind == "abandoned" for f in report.findings)


def test_a_task_whose_nodes_never_come_ends_after_its_abandoned_rounds(anvil_file):
    w = anvil_file
    coordinator = w.coordinator(report_timeout=0)
    task_id = coordinator.create_task(w.spec("federated", rounds=3, strategy="fedavg", round_seconds=10,
                                             max_abandoned=2))
    for _ in range(10):
        if coordinator.step() == "done":
            break
        w.chain.advance_time(11)
    task = w.registry.task(task_id)
    assert task.closed and task.round == 2 and len(w.events(task_id, "RoundAbandoned")) == 2
    (closed,) = w.events(task_id, "TaskClosed")
    assert "the last 2 round(s) ended without a usable update" in closed["reason"]
    audit(w, task_id)                                     # the release is the initial model, verified


# --- 3. coordinator crash, late updates, store outage --------------------------------------------
class Crash(RuntimeError):
    pass


def test_a_coordinator_crash_before_finalizing_is_resumed_from_chain_with_every_update(anvil_ipfs, monkeypatch):
    w = anvil_ipfs
    start = w.chain.block_number()
    coordinator = w.coordinator(fetch_timeout=2)
    spec = w.spec("federated", rounds=1, strategy="screened-fedavg", quorum=3)
    task_id = coordinator.create_task(spec)
    coordinator.step()
    agents = [w.agent(i, task_id, attack=attacker("inflated") if i == 0 else None) for i in range(4)]
    for a in agents[:3]:
        assert a.step() == "submitted"

    def crash(*args, **kwargs):
        raise Crash("killed after deciding, before finalizeRound")

    monkeypatch.setattr(w.registry, "finalize_round", crash)
    with pytest.raises(Crash):
        coordinator.step()                                # quorum reached: decided, aggregate stored, crash
    monkeypatch.undo()
    assert agents[3].step() == "submitted"                # a late update lands while it is down
    restarted = Coordinator(w.registry, w.store, w.coordinator_account, reports=w.box, fetch_timeout=2)
    restarted.attach(task_id, start_block=start)
    assert restarted.step() == "finalized"                # one transaction decides on all four
    (final,) = w.events(task_id, "RoundFinalized")
    flags = {f["node"]: f["reason"] for f in w.events(task_id, "UpdateFlagged")}
    assert flags.keys() == {w.accounts[0].address} and reason_code(flags[w.accounts[0].address]) == "samples"
    assert len(final["included"]) + len(final["excluded"]) + len(flags) == 4
    assert failed_txs(w.chain, w.coordinator_account.address, start) == 0


def test_an_update_landing_between_the_read_and_the_finalize_costs_one_revert(anvil_file, monkeypatch):
    w = anvil_file
    start = w.chain.block_number()
    coordinator = w.coordinator()
    task_id = coordinator.create_task(w.spec("federated", rounds=1, strategy="fedavg", quorum=3))
    coordinator.step()
    agents = [w.agent(i, task_id) for i in range(4)]
    for a in agents[:3]:
        a.step()
    original = w.registry.finalize_round

    def racing(*args, **kwargs):
        monkeypatch.setattr(w.registry, "finalize_round", original)
        assert agents[3].step() == "submitted"            # lands before the coordinator's transaction
        return original(*args, **kwargs)

    monkeypatch.setattr(w.registry, "finalize_round", racing)
    assert coordinator.step() == "reverted"               # RegistryDecisionCount: decided on 3 of 4
    assert coordinator.step() == "finalized"              # re-read: decided on all 4
    assert len(w.events(task_id, "RoundFinalized")[0]["included"]) == 4
    assert failed_txs(w.chain, w.coordinator_account.address, start) == 1


class FlakyStore:
    """A store whose daemon is down for the next ``outage`` puts (then up again)."""

    def __init__(self, store):
        self.store, self.url, self.outage = store, store.url, 0

    def put(self, data):
        if self.outage:
            self.outage -= 1
            raise StoreUnavailableError("No IPFS API at test:0 — daemon stopped for the test")
        return self.store.put(data)

    def __getattr__(self, name):
        return getattr(self.store, name)


def test_a_store_outage_between_deciding_and_storing_the_aggregate_is_ridden_out(anvil_ipfs):
    w = anvil_ipfs
    flaky = FlakyStore(w.store)
    coordinator = Coordinator(w.registry, flaky, w.coordinator_account, reports=w.box, fetch_timeout=2)
    task_id = coordinator.create_task(w.spec("federated", rounds=1, strategy="fedavg"))
    coordinator.step()
    for i in range(4):
        w.agent(i, task_id).step()
    flaky.outage = 3
    backoff = Backoff("coordinator", patience=30, first=0.01)
    assert backoff.run(coordinator.step) == "finalized"
    assert backoff.outages == 1 and flaky.outage == 0
    assert len(w.events(task_id, "RoundFinalized")) == 1


# --- 4. chained take-over --------------------------------------------------------------------------
def test_an_unresolvable_handoff_is_rejected_in_time_and_its_producer_never_builds_on_it(anvil_ipfs):
    w = anvil_ipfs
    coordinator = w.coordinator(fetch_timeout=1, report_timeout=5)
    spec = w.spec("chained", rounds=1, turn_seconds=40, fetch_patience=20)
    task_id = coordinator.create_task(spec)
    bad = w.accounts[0].address
    agents = [w.agent(0, task_id, attack=attacker("unresolvable"), fetch_timeout=1)] + \
             [w.agent(i, task_id, fetch_timeout=1) for i in (1, 2, 3)]
    assert agents[0].step() == "handoff"                  # a CID whose blob is never stored
    assert agents[1].step() == "waiting"                  # within the fetch patience (chain time)
    w.chain.advance_time(21)
    assert coordinator.step() == "waiting"                # 21 s < turn timeout: the honest node keeps its turn
    assert agents[1].step() == "rejected+handoff"         # rejected before the coordinator could skip it
    (rejected,) = w.events(task_id, "HandoffRejected")
    assert rejected["producer"] == bad and reason_code(rejected["reason"]) == "unavailable"
    assert w.events(task_id, "HandoffRecorded")[1]["parent"] == w.events(task_id, "TaskCreated")[0]["initialDigest"]
    w.drive(coordinator, agents, max_steps=400)

    assert w.registry.task(task_id).closed
    handoffs = w.events(task_id, "HandoffRecorded")
    accepted = {h["parent"] for h in handoffs}
    bad_ones = {h["digest"] for h in handoffs if h["node"] == bad}
    assert not bad_ones & accepted                        # nobody, the attacker included, built on them
    report = audit(w, task_id)
    assert report.misbehaving()[bad]["rejected:unavailable"] >= 1
    assert report.release["status"] == "ok"


# --- 5. outsider -----------------------------------------------------------------------------------
def test_an_outsider_member_is_refused_on_chain_and_shuts_nobody_out(anvil_file):
    w = anvil_file
    inside, outside = w.accounts[:3], w.accounts[3]
    spec = build_spec(mode="federated", nodes=[a.address for a in inside], rounds=2,
                      stats=[d.stats() for d in w.datas[:3]], hidden=(8,), epochs=1, seed=3, strategy="fedavg")
    coordinator = w.coordinator()
    task_id = coordinator.create_task(spec)
    w.registry.add_node(outside, w.coordinator_account)           # a registered member, not a task node
    intruder = NodeAgent(w.registry, w.store, outside, task_id, None, attack=attacker("outsider"))
    honest = [w.agent(i, task_id) for i in range(3)]
    coordinator.step()
    assert intruder.step() == "refused"                   # RegistryNotTaskNode
    w.drive(coordinator, [intruder] + honest)

    subs = w.events(task_id, "UpdateSubmitted")
    assert {s["node"] for s in subs} == {a.address for a in inside} and len(subs) == 6
    assert all(len(f["included"]) == 3 for f in w.events(task_id, "RoundFinalized"))
    assert all(a.actions.count("submitted") == 2 for a in honest)
    audit(w, task_id)


# --- 6. handled misbehaviour does not block the release --------------------------------------------
class GarbageAgent(NodeAgent):
    """Submits (or hands off) a stored blob that is not a model at all."""

    def _produce(self, parent, train_step, kind, step_value, round_=None):
        stored = modelio.put_blob(self.store, os.urandom(2048))
        return stored.digest, stored.cid, 10, 0.5


@pytest.mark.parametrize("mode", ["federated", "chained"])
def test_a_handled_garbage_blob_leaves_the_audit_ok_and_the_release_usable(anvil_ipfs, mode):
    from chainfl.audit.detect import load_release

    w = anvil_ipfs
    coordinator = w.coordinator(fetch_timeout=2)
    task_id = coordinator.create_task(w.spec(mode, rounds=1, strategy="fedavg") if mode == "federated"
                                      else w.spec(mode, rounds=1))
    agents = [w.agent(0, task_id, cls=GarbageAgent)] + [w.agent(i, task_id) for i in (1, 2, 3)]
    w.drive(coordinator, agents, max_steps=300)
    bad = w.accounts[0].address
    report = audit(w, task_id)
    kinds = report.misbehaving()[bad]
    assert kinds == ({"flagged:invalid": 1} if mode == "federated" else {"rejected:invalid": 1})
    release, again = load_release(w.chain, w.registry, w.store, task_id)    # detect accepts it
    assert again.ok and release.threshold == coordinator.threshold


# --- 7. inflated weight ----------------------------------------------------------------------------
def test_an_inflated_sample_count_is_flagged_and_fedavg_keeps_moving(anvil_file):
    w = anvil_file
    coordinator = w.coordinator()
    task_id = coordinator.create_task(w.spec("federated", rounds=1, strategy="fedavg"))
    agents = [w.agent(0, task_id, attack=attacker("inflated"))] + [w.agent(i, task_id) for i in (1, 2, 3)]
    w.drive(coordinator, agents)
    (sub,) = [s for s in w.events(task_id, "UpdateSubmitted") if s["node"] == w.accounts[0].address]
    assert sub["samples"] == INFLATED_SAMPLES
    (flag,) = w.events(task_id, "UpdateFlagged")
    committed = coordinator.spec.committed_samples(w.accounts[0].address)
    assert flag["reason"] == f"samples: claims {INFLATED_SAMPLES} training rows, but committed {committed} in its " \
                             f"statistics"
    (final,) = w.events(task_id, "RoundFinalized")
    assert w.accounts[0].address not in final["included"] and len(final["included"]) == 3
    audit(w, task_id)


# --- 8. Krum records what it does not select -------------------------------------------------------
@pytest.mark.parametrize("strategy", ["krum", "multi-krum"])
def test_krum_family_records_the_updates_it_does_not_select_and_passes_its_audit(anvil_file, strategy):
    w = anvil_file
    coordinator = w.coordinator()
    task_id = coordinator.create_task(w.spec("federated", rounds=2, strategy=strategy))
    w.drive(coordinator, [w.agent(i, task_id) for i in range(4)])
    for f in w.events(task_id, "RoundFinalized"):
        assert len(f["included"]) + len(f["excluded"]) == 4
        if strategy == "krum":                            # one selected, the other three recorded
            assert len(f["included"]) == 1 and len(f["excluded"]) == 3
    report = audit(w, task_id)
    assert report.findings == []                          # not selected is no misbehaviour
    if strategy == "krum":
        assert sum(n.excluded for n in report.nodes.values()) == 6


# --- 10. size caps ---------------------------------------------------------------------------------
class OversizedAgent(NodeAgent):
    """Submits a blob far larger than the task's model (a 'model' with a huge extra tensor)."""

    def _produce(self, parent, train_step, kind, step_value, round_=None):
        import numpy as np

        state = dict(self._load(parent))
        state["padding"] = np.zeros(4 * modelio.blob_cap(self.spec) // 4, dtype=np.float32)
        stored = modelio.put_model(self.store, state, {"kind": kind, "task": self.task_id, "node": self.address,
                                                       "step": int(step_value)})
        return stored.digest, stored.cid, 10, 0.5


def test_an_oversized_blob_is_refused_unread_and_flagged(anvil_ipfs, monkeypatch):
    w = anvil_ipfs
    coordinator = w.coordinator(fetch_timeout=5)
    task_id = coordinator.create_task(w.spec("federated", rounds=1, strategy="fedavg"))
    cap = modelio.blob_cap(coordinator.spec)
    seen = []
    original = w.store.get

    def get(cid, timeout=None, max_bytes=None):
        data = original(cid, timeout=timeout, max_bytes=max_bytes)
        seen.append((max_bytes, len(data)))
        return data

    monkeypatch.setattr(w.store, "get", get)
    agents = [w.agent(0, task_id, cls=OversizedAgent)] + [w.agent(i, task_id) for i in (1, 2, 3)]
    w.drive(coordinator, agents)
    (flag,) = w.events(task_id, "UpdateFlagged")
    assert flag["node"] == w.accounts[0].address and "BlobTooLargeError" in flag["reason"]
    assert seen and all(limit is not None and size <= limit for limit, size in seen)   # every read capped
    assert {limit for limit, _ in seen} >= {cap}
    monkeypatch.undo()
    report = audit(w, task_id)
    assert report.misbehaving() == {w.accounts[0].address: {"flagged:invalid": 1}}
