"""The registry contract suite, run unchanged on every chain backend (``chain_url``).

Every function's happy path with its events, every revert by Python error class *and* decoded
arguments. Each test deploys a fresh registry (nodes are shared across tests on Ganache/Anvil).
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from chainfl.chain import connect
from chainfl.chain import errors as E
from chainfl.chain.registry import (EVENT_NAMES, Mode, Registry, RegistryArgumentError, RoundDecision,
                                    registry_artifact)
from chainfl.errors import ContractError, DeploymentError

#: A realistic CIDv1 (base32, raw leaves, sha2-256): 59 characters, as the store returns.
CID = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
ZERO = b"\0" * 32
ZERO_ADDRESS = "0x" + "00" * 20
SELECTORS = E.error_selectors(registry_artifact()["abi"])


def D(label: str) -> bytes:
    """A stand-in model digest."""
    return hashlib.sha256(label.encode()).digest()


@contextmanager
def reverts(cls, **args):
    """Assert the block raises the typed registry error ``cls`` with exactly these decoded args."""
    with pytest.raises(cls) as info:
        yield info
    assert info.type is cls
    assert info.value.error_name == cls.__name__
    assert info.value.error_args == args
    assert cls.__name__ in str(info.value)
    data = getattr(info.value, "revert_data", None)  # None only for errors raised by views client-side
    if data is not None:
        assert SELECTORS[bytes(data[:4])]["name"] == cls.__name__


def one_event(reg: Registry, receipt, name: str) -> dict:
    events = reg.receipt_events(receipt)
    assert [e.name for e in events] == [name]
    return events[0].args


def ascending(*accounts) -> list[str]:
    return sorted((getattr(a, "address", a) for a in accounts), key=lambda a: int(a, 16))


def include(*accounts, **kw) -> RoundDecision:
    return RoundDecision(included=[a.address for a in accounts], **kw)


@dataclass
class Env:
    chain: object
    reg: Registry
    admin: object
    coord: object
    nodes: list
    outsider: object

    def chained(self, nodes=None) -> int:
        return self.reg.create_task(D("config"), CID, Mode.CHAINED, D("m0"), CID,
                                    nodes or self.nodes, self.coord)

    def federated(self, nodes=None) -> int:
        return self.reg.create_task(D("config"), CID, Mode.FEDERATED, D("g0"), CID, nodes or self.nodes,
                                    self.coord)

    def deadline(self, seconds: int = 3600) -> int:
        return self.chain.latest_timestamp() + seconds


@pytest.fixture
def env(chain_url):
    with connect(chain_url) as chain:
        a = chain.accounts
        reg = Registry.deploy(chain, a[0])
        reg.set_coordinator(a[1], True, a[0])
        for n in a[2:6]:
            reg.add_node(n, a[0])
        yield Env(chain, reg, a[0], a[1], list(a[2:6]), a[6])


# --- deployment and views --------------------------------------------------------------------
def test_deployer_is_admin_and_registry_reattaches(env):
    reg = env.reg
    assert reg.admin() == env.admin.address
    assert reg.task_count() == 0
    again = Registry.at(env.chain, reg.address)
    assert again.admin() == env.admin.address
    created = reg.events(names=["AdminTransferred"])
    assert [e.args for e in created] == [{"previousAdmin": ZERO_ADDRESS, "newAdmin": env.admin.address}]


def test_at_refuses_an_address_without_registry_code(env):
    with pytest.raises(DeploymentError, match="no contract"):
        Registry.at(env.chain, env.outsider.address)


# --- membership ----------------------------------------------------------------------------
def test_add_node_records_member_and_event(env):
    receipt = env.reg.add_node(env.outsider, env.admin)
    assert one_event(env.reg, receipt, "NodeAdded") == {"node": env.outsider.address, "by": env.admin.address}
    state = env.reg.node(env.outsider)
    assert state.member and not state.coordinator
    assert (state.handoffs, state.updates, state.flags) == (0, 0, 0)


def test_add_node_misuse(env):
    with reverts(E.RegistryNotAdmin, caller=env.coord.address):
        env.reg.add_node(env.outsider, env.coord)
    with reverts(E.RegistryAlreadyMember, account=env.nodes[0].address):
        env.reg.add_node(env.nodes[0], env.admin)
    with reverts(E.RegistryZeroAddress):
        env.reg.add_node(ZERO_ADDRESS, env.admin)


def test_remove_node_keeps_counters(env):
    task = env.chained()
    env.reg.record_handoff(task, D("m0"), D("m1"), CID, 10, 0.25, env.nodes[1], env.nodes[0])
    receipt = env.reg.remove_node(env.nodes[0], env.admin)
    assert one_event(env.reg, receipt, "NodeRemoved") == {"node": env.nodes[0].address, "by": env.admin.address}
    state = env.reg.node(env.nodes[0])
    assert not state.member and state.handoffs == 1
    with reverts(E.RegistryNotMember, account=env.nodes[0].address):
        env.reg.remove_node(env.nodes[0], env.admin)
    with reverts(E.RegistryNotAdmin, caller=env.nodes[1].address):
        env.reg.remove_node(env.nodes[1], env.nodes[1])


def test_set_coordinator_grants_and_revokes(env):
    receipt = env.reg.set_coordinator(env.outsider, True, env.admin)
    assert one_event(env.reg, receipt, "CoordinatorGranted") == {"account": env.outsider.address,
                                                                  "by": env.admin.address}
    assert env.reg.node(env.outsider).coordinator
    receipt = env.reg.set_coordinator(env.outsider, False, env.admin)
    assert one_event(env.reg, receipt, "CoordinatorRevoked") == {"account": env.outsider.address,
                                                                  "by": env.admin.address}
    assert not env.reg.node(env.outsider).coordinator
    with reverts(E.RegistryNotAdmin, caller=env.outsider.address):
        env.reg.set_coordinator(env.outsider, True, env.outsider)
    with reverts(E.RegistryZeroAddress):
        env.reg.set_coordinator(ZERO_ADDRESS, True, env.admin)


def test_transfer_admin(env):
    receipt = env.reg.transfer_admin(env.outsider, env.admin)
    assert one_event(env.reg, receipt, "AdminTransferred") == {"previousAdmin": env.admin.address,
                                                                "newAdmin": env.outsider.address}
    assert env.reg.admin() == env.outsider.address
    with reverts(E.RegistryNotAdmin, caller=env.admin.address):
        env.reg.add_node(env.chain.accounts[7], env.admin)
    env.reg.add_node(env.chain.accounts[7], env.outsider)
    with reverts(E.RegistryZeroAddress):
        env.reg.transfer_admin(ZERO_ADDRESS, env.outsider)


# --- tasks ---------------------------------------------------------------------------------
def test_create_chained_task(env):
    receipt_task = env.reg.create_task(D("config"), CID, Mode.CHAINED, D("m0"), CID, env.nodes, env.coord)
    assert receipt_task == 1 and env.reg.task_count() == 1
    [event] = env.reg.events(names=["TaskCreated"])
    assert event.args == {"taskId": 1, "coordinator": env.coord.address, "mode": 1, "configDigest": D("config"),
                          "configCid": CID, "initialDigest": D("m0"), "initialCid": CID,
                          "nodes": [n.address for n in env.nodes]}
    t = env.reg.task(1)
    assert (t.mode, t.closed, t.coordinator, t.expected, t.head_node, t.seq, t.node_count) == \
        (Mode.CHAINED, False, env.coord.address, env.nodes[0].address, None, 0, 4)
    assert t.head == t.accepted == D("m0")
    assert env.reg.seat(1, env.nodes[2]) == (True, 0) and env.reg.seat(1, env.outsider) == (False, 0)
    assert env.chained(env.nodes[2:]) == 2
    assert env.reg.task(2).expected == env.nodes[2].address


def test_create_federated_task(env):
    task = env.federated(env.nodes[1:3])
    [event] = env.reg.events(names=["TaskCreated"])
    assert event.args["mode"] == 2 and event.args["nodes"] == [env.nodes[1].address, env.nodes[2].address]
    t = env.reg.task(task)
    assert (t.mode, t.expected, t.round, t.round_open, t.head, t.node_count, t.round_submissions) == \
        (Mode.FEDERATED, None, 0, False, D("g0"), 2, 0)


def test_create_task_misuse(env):
    reg, c, n = env.reg, env.coord, env.nodes
    with reverts(E.RegistryNotCoordinator, caller=n[0].address):
        reg.create_task(D("c"), CID, Mode.CHAINED, D("m0"), CID, n, n[0])
    with reverts(E.RegistryZeroDigest):
        reg.create_task(ZERO, CID, Mode.CHAINED, D("m0"), CID, n, c)
    with reverts(E.RegistryZeroDigest):
        reg.create_task(D("c"), CID, Mode.CHAINED, ZERO, CID, n, c)
    with reverts(E.RegistryEmptyCid):
        reg.create_task(D("c"), "", Mode.CHAINED, D("m0"), CID, n, c)
    with reverts(E.RegistryCidTooLong, length=129, maxLength=128):
        reg.create_task(D("c"), CID, Mode.CHAINED, D("m0"), "b" * 129, n, c)
    with reverts(E.RegistryNotMember, account=env.outsider.address):
        reg.create_task(D("c"), CID, Mode.CHAINED, D("m0"), CID, [n[0], env.outsider], c)
    with reverts(E.RegistryNoNodes):
        reg.create_task(D("c"), CID, Mode.FEDERATED, D("m0"), CID, [], c)
    with reverts(E.RegistryDuplicateTaskNode, account=n[1].address):
        reg.create_task(D("c"), CID, Mode.FEDERATED, D("m0"), CID, [n[1], n[0], n[1]], c)
    raw = reg.contract.functions.createTask(D("c"), CID, 0, D("m0"), CID, [n[0].address])
    with reverts(E.RegistryWrongMode, taskId=0, mode=0):
        reg._transact(raw, c)
    assert reg.task_count() == 0


def test_create_task_refuses_more_than_the_node_cap(env):
    cap = env.reg.contract.functions.MAX_TASK_NODES().call()
    many = [n.address for n in env.nodes] * (cap // 4 + 1)     # cap + 4 entries: the cap comes first
    raw = env.reg.contract.functions.createTask(D("c"), CID, 2, D("m0"), CID, many)
    with reverts(E.RegistryTooManyNodes, count=len(many), maxCount=cap):
        env.reg._transact(raw, env.coord, gas=3_000_000)


def test_close_task(env):
    task = env.chained()
    with reverts(E.RegistryNotTaskCoordinator, taskId=task, coordinator=env.coord.address, caller=env.admin.address):
        env.reg.close_task(task, None, None, env.admin)
    receipt = env.reg.close_task(task, None, None, env.coord, reason="planned rounds done")
    assert one_event(env.reg, receipt, "TaskClosed") == {"taskId": task, "by": env.coord.address,
                                                         "releaseDigest": ZERO, "releaseCid": "",
                                                         "reason": "planned rounds done",
                                                         "evidenceDigest": ZERO, "evidenceCid": ""}
    assert env.reg.task(task).closed
    with reverts(E.RegistryTaskClosed, taskId=task):
        env.reg.close_task(task, None, None, env.coord)
    with reverts(E.RegistryTaskClosed, taskId=task):
        env.reg.record_handoff(task, D("m0"), D("m1"), CID, 1, 0.0, env.nodes[1], env.nodes[0])
    with reverts(E.RegistryUnknownTask, taskId=99):
        env.reg.close_task(99, None, None, env.coord)
    with reverts(E.RegistryUnknownTask, taskId=99):
        env.reg.task(99)


def test_close_task_with_a_release(env):
    task = env.federated()
    with reverts(E.RegistryEmptyCid):
        env.reg.close_task(task, D("release"), None, env.coord)
    with reverts(E.RegistryZeroDigest):
        env.reg.close_task(task, None, CID, env.coord)
    with reverts(E.RegistryEmptyCid):
        env.reg.close_task(task, D("release"), CID, env.coord, evidence_digest=D("reports"))
    rnd = env.reg.open_round(task, env.deadline(), env.coord)
    receipt = env.reg.close_task(task, D("release"), CID, env.coord, evidence_digest=D("reports"),
                                 evidence_cid=CID)
    assert one_event(env.reg, receipt, "TaskClosed") == {"taskId": task, "by": env.coord.address,
                                                         "releaseDigest": D("release"), "releaseCid": CID,
                                                         "reason": "", "evidenceDigest": D("reports"),
                                                         "evidenceCid": CID}
    t = env.reg.task(task)
    assert t.closed and not t.round_open
    with reverts(E.RegistryTaskClosed, taskId=task):
        env.reg.submit_update(task, rnd, D("g0"), D("u"), CID, 1, 0.1, env.nodes[0])


def test_reasons_are_capped_on_chain_and_clipped_by_the_client(env):
    from chainfl.chain.registry import MAX_REASON_BYTES, clip_reason

    task = env.chained()
    raw = env.reg.contract.functions.closeTask(task, ZERO, "", "r" * (MAX_REASON_BYTES + 1), ZERO, "")
    with reverts(E.RegistryReasonTooLong, length=MAX_REASON_BYTES + 1, maxLength=MAX_REASON_BYTES):
        env.reg._transact(raw, env.coord, gas=200_000)
    long = "é" * 200                                      # 400 UTF-8 bytes
    assert len(clip_reason(long).encode()) <= MAX_REASON_BYTES and long.startswith(clip_reason(long))
    receipt = env.reg.close_task(task, None, None, env.coord, reason=long)
    assert one_event(env.reg, receipt, "TaskClosed")["reason"] == clip_reason(long)


def test_revoked_coordinator_cannot_run_its_task(env):
    task = env.chained()
    env.reg.set_coordinator(env.coord, False, env.admin)
    with reverts(E.RegistryNotCoordinator, caller=env.coord.address):
        env.reg.skip_turn(task, env.nodes[1], env.coord)


# --- chained mode --------------------------------------------------------------------------
def test_handoff_moves_head_and_turn(env):
    reg, (n0, n1, n2, _) = env.reg, env.nodes
    task = env.chained()
    receipt = reg.record_handoff(task, D("m0"), D("m1"), CID, 120, 0.693147, n1, n0)
    assert one_event(reg, receipt, "HandoffRecorded") == {
        "taskId": task, "node": n0.address, "next": n1.address, "seq": 1, "parent": D("m0"),
        "digest": D("m1"), "cid": CID, "samples": 120, "lossE6": 693147}
    t = reg.task(task)
    assert (t.head, t.accepted, t.head_node, t.expected, t.seq) == (D("m1"), D("m0"), n0.address, n1.address, 1)
    reg.record_handoff(task, D("m1"), D("m2"), CID, 80, 0.5, n2, n1)
    t = reg.task(task)
    assert (t.head, t.accepted, t.head_node, t.expected, t.seq) == (D("m2"), D("m1"), n1.address, n2.address, 2)
    assert reg.node(n0).handoffs == 1 and reg.node(n1).handoffs == 1 and reg.node(n2).handoffs == 0


def test_handoff_misuse(env):
    reg, (n0, n1, n2, n3) = env.reg, env.nodes
    task = env.chained([n0, n1, n2])
    with reverts(E.RegistryNotYourTurn, taskId=task, expected=n0.address, caller=n1.address):
        reg.record_handoff(task, D("m0"), D("m1"), CID, 1, 0.1, n2, n1)
    with reverts(E.RegistryStaleParent, taskId=task, head=D("m0"), parent=D("old")):
        reg.record_handoff(task, D("old"), D("m1"), CID, 1, 0.1, n1, n0)
    with reverts(E.RegistryUnchangedModel, taskId=task, digest=D("m0")):
        reg.record_handoff(task, D("m0"), D("m0"), CID, 1, 0.1, n1, n0)
    with reverts(E.RegistryZeroDigest):
        reg.record_handoff(task, D("m0"), ZERO, CID, 1, 0.1, n1, n0)
    with reverts(E.RegistryEmptyCid):
        reg.record_handoff(task, D("m0"), D("m1"), "", 1, 0.1, n1, n0)
    with reverts(E.RegistryZeroSamples):
        reg.record_handoff(task, D("m0"), D("m1"), CID, 0, 0.1, n1, n0)
    with reverts(E.RegistryNotTaskNode, taskId=task, account=env.outsider.address):
        reg.record_handoff(task, D("m0"), D("m1"), CID, 1, 0.1, env.outsider, n0)
    # a registered member outside the task's node set cannot be handed to either
    with reverts(E.RegistryNotTaskNode, taskId=task, account=n3.address):
        reg.record_handoff(task, D("m0"), D("m1"), CID, 1, 0.1, n3, n0)
    with reverts(E.RegistryHandoffToSelf, taskId=task, node=n0.address):
        reg.record_handoff(task, D("m0"), D("m1"), CID, 1, 0.1, n0, n0)
    federated = env.federated()
    with reverts(E.RegistryWrongMode, taskId=federated, mode=2):
        reg.record_handoff(federated, D("g0"), D("m1"), CID, 1, 0.1, n1, n0)
    with reverts(E.RegistryUnknownTask, taskId=42):
        reg.record_handoff(42, D("m0"), D("m1"), CID, 1, 0.1, n1, n0)
    reg.remove_node(n0, env.admin)
    with reverts(E.RegistryNotMember, account=n0.address):
        reg.record_handoff(task, D("m0"), D("m1"), CID, 1, 0.1, n1, n0)
    assert reg.task(task).seq == 0


def test_a_single_node_task_may_hand_to_itself(env):
    reg, n0 = env.reg, env.nodes[0]
    task = env.chained([n0])
    reg.record_handoff(task, D("m0"), D("m1"), CID, 1, 0.1, n0, n0)
    reg.record_handoff(task, D("m1"), D("m2"), CID, 1, 0.1, n0, n0)
    assert reg.task(task).seq == 2


def test_no_node_accepts_its_own_handoff(env):
    """The chained take-over: a producer whose head is unaccepted never gets the turn back, so it
    cannot accept its own (possibly unresolvable) model by building on it."""
    reg, (n0, n1, n2, _) = env.reg, env.nodes
    task = env.chained([n0, n1, n2])
    reg.record_handoff(task, D("m0"), D("m1"), CID, 1, 0.1, n1, n0)
    with reverts(E.RegistrySkipToProducer, taskId=task, producer=n0.address):
        reg.skip_turn(task, n0, env.coord)                 # n1 silent: the turn may not return to n0
    reg.skip_turn(task, n2, env.coord)                     # ... it goes to n2, who checks m1
    reg.record_handoff(task, D("m1"), D("m2"), CID, 1, 0.1, n0, n2)   # n2 accepts m1, hands to n0
    t = reg.task(task)
    assert (t.accepted, t.head, t.head_node, t.expected) == (D("m1"), D("m2"), n2.address, n0.address)


def test_reject_returns_head_to_accepted(env):
    reg, (n0, n1, n2, _) = env.reg, env.nodes
    task = env.chained()
    reg.record_handoff(task, D("m0"), D("m1"), CID, 10, 0.1, n1, n0)
    reg.record_handoff(task, D("m1"), D("bad"), CID, 10, 0.1, n2, n1)
    receipt = reg.reject_handoff(task, D("bad"), "validation F1 dropped 0.41", n2)
    assert one_event(reg, receipt, "HandoffRejected") == {
        "taskId": task, "node": n2.address, "producer": n1.address, "digest": D("bad"),
        "restored": D("m1"), "reason": "validation F1 dropped 0.41"}
    t = reg.task(task)
    assert (t.head, t.accepted, t.head_node, t.expected) == (D("m1"), D("m1"), None, n2.address)
    assert reg.node(n2).rejections_issued == 1 and reg.node(n1).rejections_received == 1
    # the rejecting node now trains from the restored head
    reg.record_handoff(task, D("m1"), D("m2"), CID, 10, 0.1, n0, n2)
    assert reg.task(task).head == D("m2")


def test_reject_misuse(env):
    reg, (n0, n1, n2, _) = env.reg, env.nodes
    task = env.chained()
    with reverts(E.RegistryNothingToReject, taskId=task, head=D("m0"), accepted=D("m0"), digest=D("m0")):
        reg.reject_handoff(task, D("m0"), "initial model", n0)
    reg.record_handoff(task, D("m0"), D("m1"), CID, 10, 0.1, n1, n0)
    with reverts(E.RegistryNotYourTurn, taskId=task, expected=n1.address, caller=n2.address):
        reg.reject_handoff(task, D("m1"), "not mine", n2)
    with reverts(E.RegistryNothingToReject, taskId=task, head=D("m1"), accepted=D("m0"), digest=D("m0")):
        reg.reject_handoff(task, D("m0"), "already accepted", n1)
    reg.reject_handoff(task, D("m1"), "poisoned", n1)
    with reverts(E.RegistryNothingToReject, taskId=task, head=D("m0"), accepted=D("m0"), digest=D("m1")):
        reg.reject_handoff(task, D("m1"), "twice", n1)


def test_skip_turn(env):
    reg, (n0, n1, _, n3) = env.reg, env.nodes
    task = env.chained(env.nodes[:3])
    receipt = reg.skip_turn(task, n1, env.coord)
    assert one_event(reg, receipt, "TurnSkipped") == {"taskId": task, "skipped": n0.address, "next": n1.address,
                                                      "by": env.coord.address}
    t = reg.task(task)
    assert t.expected == n1.address and t.head == D("m0") and t.seq == 0
    with reverts(E.RegistryNotTaskCoordinator, taskId=task, coordinator=env.coord.address, caller=n1.address):
        reg.skip_turn(task, n0, n1)
    with reverts(E.RegistryNotTaskNode, taskId=task, account=env.outsider.address):
        reg.skip_turn(task, env.outsider, env.coord)
    with reverts(E.RegistryNotTaskNode, taskId=task, account=n3.address):
        reg.skip_turn(task, n3, env.coord)


# --- federated mode ------------------------------------------------------------------------
def test_open_round(env):
    reg = env.reg
    task = env.federated()
    deadline = env.deadline()
    assert reg.open_round(task, deadline, env.coord) == 1
    [event] = reg.events(names=["RoundOpened"])
    assert event.args == {"taskId": task, "round": 1, "globalModel": D("g0"), "deadline": deadline}
    t = reg.task(task)
    assert (t.round, t.round_open, t.deadline) == (1, True, deadline)
    with reverts(E.RegistryRoundStillOpen, taskId=task, round=1):
        reg.open_round(task, deadline, env.coord)


def test_open_round_misuse(env):
    reg = env.reg
    task = env.federated()
    with reverts(E.RegistryNotTaskCoordinator, taskId=task, coordinator=env.coord.address, caller=env.admin.address):
        reg.open_round(task, env.deadline(), env.admin)
    now = env.chain.latest_timestamp()
    with pytest.raises(E.RegistryBadDeadline) as info:
        reg.open_round(task, now - 1, env.coord)
    assert info.value.error_args["deadline"] == now - 1 and info.value.error_args["timestamp"] >= now
    chained = env.chained()
    with reverts(E.RegistryWrongMode, taskId=chained, mode=1):
        reg.open_round(chained, env.deadline(), env.coord)


def test_submit_update(env):
    reg, (n0, n1, _, _) = env.reg, env.nodes
    task = env.federated()
    rnd = reg.open_round(task, env.deadline(), env.coord)
    assert not reg.has_submitted(task, rnd, n0)
    receipt = reg.submit_update(task, rnd, D("g0"), D("u0"), CID, 250, 0.3, n0)
    assert one_event(reg, receipt, "UpdateSubmitted") == {
        "taskId": task, "round": 1, "node": n0.address, "parent": D("g0"), "digest": D("u0"), "cid": CID,
        "samples": 250, "lossE6": 300000}
    assert reg.has_submitted(task, rnd, n0) and not reg.has_submitted(task, rnd, n1)
    assert reg.node(n0).updates == 1 and reg.task(task).round_submissions == 1
    assert reg.seat(task, n0) == (True, 1)
    with reverts(E.RegistryAlreadySubmitted, taskId=task, round=1, node=n0.address):
        reg.submit_update(task, rnd, D("g0"), D("u0b"), CID, 250, 0.3, n0)


def test_submit_update_misuse(env):
    reg, (n0, n1, n2, _) = env.reg, env.nodes
    task = env.federated([n0, n1])
    with reverts(E.RegistryWrongRound, taskId=task, currentRound=0, round=1):
        reg.submit_update(task, 1, D("g0"), D("u"), CID, 1, 0.1, n0)
    rnd = reg.open_round(task, env.deadline(60), env.coord)
    with reverts(E.RegistryNotMember, account=env.outsider.address):
        reg.submit_update(task, rnd, D("g0"), D("u"), CID, 1, 0.1, env.outsider)
    # the outsider attack: a registered member that is not one of the task's nodes
    with reverts(E.RegistryNotTaskNode, taskId=task, account=n2.address):
        reg.submit_update(task, rnd, D("g0"), D("u"), CID, 1, 0.1, n2)
    with reverts(E.RegistryWrongRound, taskId=task, currentRound=1, round=2):
        reg.submit_update(task, 2, D("g0"), D("u"), CID, 1, 0.1, n0)
    with reverts(E.RegistryStaleParent, taskId=task, head=D("g0"), parent=D("other")):
        reg.submit_update(task, rnd, D("other"), D("u"), CID, 1, 0.1, n0)
    with reverts(E.RegistryZeroSamples):
        reg.submit_update(task, rnd, D("g0"), D("u"), CID, 0, 0.1, n0)
    with reverts(E.RegistryZeroDigest):
        reg.submit_update(task, rnd, D("g0"), ZERO, CID, 1, 0.1, n0)
    assert reg.task(task).round_submissions == 0
    reg.submit_update(task, rnd, D("g0"), D("u1"), CID, 1, 0.1, n1)
    reg.finalize_round(task, rnd, D("g1"), CID, include(n1), env.coord)
    with reverts(E.RegistryRoundNotOpen, taskId=task, round=1):
        reg.submit_update(task, rnd, D("g0"), D("u"), CID, 1, 0.1, n0)


def test_submit_after_deadline(env):
    reg, n0 = env.reg, env.nodes[0]
    task = env.federated()
    deadline = env.deadline(30)
    rnd = reg.open_round(task, deadline, env.coord)
    env.chain.advance_time(120)
    with pytest.raises(E.RegistryDeadlinePassed) as info:
        reg.submit_update(task, rnd, D("g0"), D("u"), CID, 1, 0.1, n0)
    args = info.value.error_args
    assert (args["taskId"], args["round"], args["deadline"]) == (task, 1, deadline)
    assert args["timestamp"] > deadline


def test_finalize_round_decides_on_every_update_at_once(env):
    reg, (n0, n1, n2, n3) = env.reg, env.nodes
    task = env.federated()
    rnd = reg.open_round(task, env.deadline(), env.coord)
    for i, n in enumerate((n0, n1, n2, n3)):
        reg.submit_update(task, rnd, D("g0"), D(f"u{i}"), CID, 10 + i, 0.1, n)
    decision = RoundDecision(included=[n1.address, n0.address], excluded=[n3.address],
                             flagged={n2.address: "norm 41x median"}, evidence_digest=D("evidence"),
                             evidence_cid=CID)
    receipt = reg.finalize_round(task, rnd, D("g1"), CID, decision, env.coord)
    events = reg.receipt_events(receipt)
    assert [e.name for e in events] == ["UpdateFlagged", "RoundFinalized"]
    assert events[0].args == {"taskId": task, "round": 1, "node": n2.address, "reason": "norm 41x median"}
    assert events[1].args == {"taskId": task, "round": 1, "parent": D("g0"), "digest": D("g1"), "cid": CID,
                              "included": ascending(n0, n1), "excluded": [n3.address],
                              "evidenceDigest": D("evidence"), "evidenceCid": CID}
    assert reg.node(n2).flags == 1 and reg.node(n3).flags == 0
    t = reg.task(task)
    assert (t.head, t.accepted, t.round_open, t.round) == (D("g1"), D("g1"), False, 1)
    rnd2 = reg.open_round(task, env.deadline(), env.coord)
    assert rnd2 == 2 and reg.task(task).round_submissions == 0
    with reverts(E.RegistryStaleParent, taskId=task, head=D("g1"), parent=D("g0")):
        reg.submit_update(task, rnd2, D("g0"), D("v0"), CID, 1, 0.1, n0)
    reg.submit_update(task, rnd2, D("g1"), D("v0"), CID, 1, 0.1, n0)
    assert reg.has_submitted(task, 2, n0) and not reg.has_submitted(task, 2, n1)


def test_finalize_misuse(env):
    reg, (n0, n1, n2, _) = env.reg, env.nodes
    task = env.federated()
    rnd = reg.open_round(task, env.deadline(), env.coord)
    reg.submit_update(task, rnd, D("g0"), D("u0"), CID, 1, 0.1, n0)
    reg.submit_update(task, rnd, D("g0"), D("u1"), CID, 1, 0.1, n1)
    fn = reg.contract.functions.finalizeRound

    def raw(nodes, codes, reasons=()):
        return fn(task, rnd, D("g1"), CID, ([getattr(n, "address", n) for n in nodes], bytes(codes),
                                            list(reasons), ZERO, ""))

    with reverts(E.RegistryNothingIncluded, taskId=task, round=1):
        reg.finalize_round(task, rnd, D("g1"), CID, RoundDecision(flagged={n0.address: "a", n1.address: "b"}),
                           env.coord)
    # every submitted update needs a decision: an update left out is refused on chain
    with reverts(E.RegistryDecisionCount, taskId=task, round=1, decided=1, submitted=2):
        reg.finalize_round(task, rnd, D("g1"), CID, include(n0), env.coord)
    with reverts(E.RegistryNotSubmitted, taskId=task, round=1, node=n2.address):
        reg.finalize_round(task, rnd, D("g1"), CID, include(n0, n2), env.coord)
    with reverts(E.RegistryNotTaskCoordinator, taskId=task, coordinator=env.coord.address, caller=n0.address):
        reg.finalize_round(task, rnd, D("g1"), CID, include(n0, n1), n0)
    with reverts(E.RegistryZeroDigest):
        reg.finalize_round(task, rnd, ZERO, CID, include(n0, n1), env.coord)
    with reverts(E.RegistryEmptyCid):
        reg.finalize_round(task, rnd, D("g1"), CID, include(n0, n1, evidence_digest=D("e")), env.coord)
    # the client sorts; the contract itself refuses unsorted or duplicate lists, bad codes, reasons
    with reverts(E.RegistryNodesNotSorted, index=1, node=n0.address):
        reg._transact(raw([n0, n0], [0, 0]), env.coord)
    low, high = ascending(n0, n1)
    with reverts(E.RegistryNodesNotSorted, index=1, node=low):
        reg._transact(raw([high, low], [0, 0]), env.coord)
    with reverts(E.RegistryBadDecision, index=1, code=7):
        reg._transact(raw([low, high], [0, 7]), env.coord)
    with reverts(E.RegistryReasonCount, flagged=1, reasons=0):
        reg._transact(raw([low, high], [0, 2]), env.coord)
    with reverts(E.RegistryReasonCount, flagged=0, reasons=1):
        reg._transact(raw([low, high], [0, 1], ["why"]), env.coord)
    with reverts(E.RegistryDecisionCount, taskId=task, round=1, decided=2, submitted=2):
        reg._transact(raw([low, high], [0]), env.coord)
    with pytest.raises(RegistryArgumentError, match="more than once"):
        RoundDecision(included=[n0.address], flagged={n0.address: "x"})  # never sent: client-side
    reg.finalize_round(task, rnd, D("g1"), CID, include(n0, n1), env.coord)
    with reverts(E.RegistryRoundNotOpen, taskId=task, round=1):
        reg.finalize_round(task, rnd, D("g2"), CID, include(n0, n1), env.coord)


def test_abandon_round_keeps_the_global_model(env):
    reg, (n0, n1, _, _) = env.reg, env.nodes
    task = env.federated()
    # 1. an empty round (every node down): abandoned after the deadline, then reopened on g0
    rnd = reg.open_round(task, env.deadline(30), env.coord)
    env.chain.advance_time(120)
    receipt = reg.abandon_round(task, rnd, RoundDecision(), "deadline passed with no update", env.coord)
    assert one_event(reg, receipt, "RoundAbandoned") == {
        "taskId": task, "round": 1, "globalModel": D("g0"), "excluded": [],
        "reason": "deadline passed with no update", "evidenceDigest": ZERO, "evidenceCid": ""}
    t = reg.task(task)
    assert (t.round_open, t.head, t.round) == (False, D("g0"), 1)
    # 2. a round whose every update is unusable: flagged, abandoned, the global model stays
    rnd = reg.open_round(task, env.deadline(), env.coord)
    assert rnd == 2
    reg.submit_update(task, rnd, D("g0"), D("u0"), CID, 1, 0.1, n0)
    reg.submit_update(task, rnd, D("g0"), D("u1"), CID, 1, 0.1, n1)
    with reverts(E.RegistryDecisionCount, taskId=task, round=2, decided=0, submitted=2):
        reg.abandon_round(task, rnd, RoundDecision(), "nothing usable", env.coord)
    with pytest.raises(E.RegistryIncludedInAbandon):
        reg.abandon_round(task, rnd, RoundDecision(included=[n0.address], flagged={n1.address: "x"}), "no",
                          env.coord)
    decision = RoundDecision(excluded=[n0.address], flagged={n1.address: "blob never resolved"})
    receipt = reg.abandon_round(task, rnd, decision, "fewer usable updates than min_updates", env.coord)
    assert [e.name for e in reg.receipt_events(receipt)] == ["UpdateFlagged", "RoundAbandoned"]
    assert reg.task(task).head == D("g0") and reg.node(n1).flags == 1
    with reverts(E.RegistryRoundNotOpen, taskId=task, round=2):
        reg.abandon_round(task, rnd, decision, "again", env.coord)
    with reverts(E.RegistryNotTaskCoordinator, taskId=task, coordinator=env.coord.address, caller=n0.address):
        reg.abandon_round(task, rnd, decision, "not mine", n0)
    assert reg.open_round(task, env.deadline(), env.coord) == 3


# --- history and client-side checks ----------------------------------------------------------
def test_events_filter_by_task_and_name_in_any_chunking(env):
    reg, (n0, n1, _, _) = env.reg, env.nodes
    start = env.chain.block_number() + 1
    a = env.chained()
    b = env.federated()
    reg.record_handoff(a, D("m0"), D("m1"), CID, 1, 0.1, n1, n0)
    rnd = reg.open_round(b, env.deadline(), env.coord)
    reg.submit_update(b, rnd, D("g0"), D("u"), CID, 1, 0.1, n0)
    everything = reg.events(from_block=start)
    assert [e.name for e in everything] == ["TaskCreated", "TaskCreated", "HandoffRecorded",
                                            "RoundOpened", "UpdateSubmitted"]
    keys = [(e.block_number, e.log_index) for e in everything]
    assert keys == sorted(keys) and all(e.tx_hash.startswith("0x") for e in everything)
    assert reg.events(from_block=start, chunk=1) == everything
    assert [e.name for e in reg.events(from_block=start, task_id=a)] == ["TaskCreated", "HandoffRecorded"]
    assert [e.args["taskId"] for e in reg.events(from_block=start, names=["TaskCreated"])] == [a, b]
    with pytest.raises(RegistryArgumentError, match="unknown event"):
        reg.events(names=["Nope"])


def test_client_rejects_unencodable_values(env):
    reg, (n0, n1, _, _) = env.reg, env.nodes
    task = env.chained()
    with pytest.raises(RegistryArgumentError, match="32 bytes"):
        reg.record_handoff(task, D("m0")[:31], D("m1"), CID, 1, 0.1, n1, n0)
    with pytest.raises(RegistryArgumentError, match="loss"):
        reg.record_handoff(task, D("m0"), D("m1"), CID, 1, float("nan"), n1, n0)
    with pytest.raises(RegistryArgumentError, match="loss"):
        reg.record_handoff(task, D("m0"), D("m1"), CID, 1, -0.5, n1, n0)
    with pytest.raises(RegistryArgumentError, match="address"):
        reg.record_handoff(task, D("m0"), D("m1"), CID, 1, 0.1, "0x1234", n0)
    with pytest.raises(RegistryArgumentError, match="more than once"):
        RoundDecision(included=[n0.address], excluded=[n0.address.lower()])
    # hex strings are accepted for digests
    reg.record_handoff(task, "0x" + D("m0").hex(), D("m1").hex(), CID, 1, 0.1, n1, n0)
    assert reg.task(task).head == D("m1")


def test_gas_of_handoff_and_submission_within_target(env):
    reg, (n0, n1, n2, _) = env.reg, env.nodes
    task = env.chained()
    used = [reg.record_handoff(task, D(f"m{i}"), D(f"m{i + 1}"), CID, 1000, 0.1, n, sender)["gasUsed"]
            for i, (sender, n) in enumerate([(n0, n1), (n1, n2), (n2, n0)])]
    fed = env.federated()
    rnd = reg.open_round(fed, env.deadline(), env.coord)
    used += [reg.submit_update(fed, rnd, D("g0"), D(f"u{i}"), CID, 1000, 0.1, n)["gasUsed"]
             for i, n in enumerate((n0, n1))]
    assert max(used) <= 65_000, used
    from chainfl.chain.registry import GAS_LIMITS
    assert max(used) * 1.5 < min(GAS_LIMITS["recordHandoff"], GAS_LIMITS["submitUpdate"])


# --- the Python error classes match the ABI (no chain needed) --------------------------------
def test_every_abi_error_has_a_python_class_and_back():
    from chainfl.chain.registry import registry_artifact

    abi_errors = {e["name"] for e in registry_artifact()["abi"] if e["type"] == "error"}
    assert abi_errors == set(E.CONTRACT_ERRORS)
    for cls in E.CONTRACT_ERRORS.values():
        assert issubclass(cls, ContractError)
    assert "HandoffRecorded" in EVENT_NAMES


def test_decode_revert_builds_typed_error_and_ignores_foreign_data():
    from eth_abi import encode
    from eth_utils import keccak

    from chainfl.chain.registry import registry_artifact

    selectors = E.error_selectors(registry_artifact()["abi"])
    caller = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
    payload = keccak(text="RegistryNotYourTurn(uint256,address,address)")[:4] + \
        encode(["uint256", "address", "address"], [7, caller, caller])
    error = E.decode_revert(payload, selectors)
    assert type(error) is E.RegistryNotYourTurn
    assert error.error_args == {"taskId": 7, "expected": caller, "caller": caller}
    assert "task 7" in str(error) and "turn" in str(error)
    assert E.decode_revert(b"", selectors) is None
    assert E.decode_revert(bytes.fromhex("08c379a0") + encode(["string"], ["x"]), selectors) is None


def _execution_gas(chain, receipt) -> int:
    """gasUsed minus the calldata cost (4 gas per zero byte, 16 per other byte)."""
    data = bytes(chain.w3.eth.get_transaction(receipt["transactionHash"])["input"])
    return receipt["gasUsed"] - sum(4 if b == 0 else 16 for b in data)


def test_gas_does_not_grow_with_registered_or_task_nodes(env):
    """Submission and handoff gas is the same in a 2-node task and in a 14-node task of a registry
    with 10 more members (membership is one slot per node, written at creation)."""
    reg, (n0, n1, _, _) = env.reg, env.nodes
    extras = list(env.chain.accounts[20:30])
    for extra in extras:
        reg.add_node(extra, env.admin)

    def measure(nodes) -> tuple[int, int]:
        task = env.chained(nodes)
        fed = env.federated(nodes)
        out = []
        head, glob = D("m0"), D("g0")
        for i in range(3):                      # the first handoff / submission is measured too
            sender, nxt = (n0, n1) if i % 2 == 0 else (n1, n0)
            handoff = reg.record_handoff(task, head, D(f"m{i + 1}"), CID, 7, 0.1, nxt, sender)
            r = reg.open_round(fed, env.deadline(), env.coord)
            submit = reg.submit_update(fed, r, glob, D(f"u{i}"), CID, 7, 0.1, n0)
            reg.finalize_round(fed, r, D(f"g{i + 1}"), CID, include(n0), env.coord)
            out.append((_execution_gas(env.chain, handoff), _execution_gas(env.chain, submit)))
            head, glob = D(f"m{i + 1}"), D(f"g{i + 1}")
        return out

    small = measure([n0, n1])
    large = measure([n0, n1, *env.nodes[2:], *extras])
    assert [h for h, _ in small][1:] == [h for h, _ in large][1:]      # seq 1 differs: accepted 0 -> m0
    assert [s for _, s in small] == [s for _, s in large]
    assert len({s for _, s in small}) == 1                               # first submission costs the same


# --- gas limits: fixed (default) and estimated paths give the same typed errors ----------------
def test_estimated_gas_path_decodes_reverts_too(env):
    estimating = Registry.at(env.chain, env.reg.address, fixed_gas=False)
    task = env.chained()
    with reverts(E.RegistryNotYourTurn, taskId=task, expected=env.nodes[0].address, caller=env.nodes[1].address):
        estimating.record_handoff(task, D("m0"), D("m1"), CID, 1, 0.1, env.nodes[2], env.nodes[1])
    receipt = estimating.record_handoff(task, D("m0"), D("m1"), CID, 1, 0.1, env.nodes[1], env.nodes[0])
    assert receipt["status"] == 1


def test_fixed_gas_limits_cover_long_reasons_and_many_decided(env):
    from chainfl.chain.registry import MAX_REASON_BYTES

    reg, nodes = env.reg, env.nodes
    task = env.chained()
    reg.record_handoff(task, D("m0"), D("m1"), CID, 1, 0.1, nodes[1], nodes[0])
    reason = "x" * 2000
    receipt = reg.reject_handoff(task, D("m1"), reason, nodes[1])
    assert one_event(reg, receipt, "HandoffRejected")["reason"] == reason[:MAX_REASON_BYTES]
    members = list(env.chain.accounts[10:34])
    for m in members:
        reg.add_node(m, env.admin)
    fed = env.federated(members)
    rnd = reg.open_round(fed, env.deadline(), env.coord)
    for i, m in enumerate(members):
        reg.submit_update(fed, rnd, D("g0"), D(f"u{i}"), CID, 1, 0.1, m)
    decision = RoundDecision(included=[m.address for m in members[8:]], excluded=[m.address for m in members[4:8]],
                             flagged={m.address: reason for m in members[:4]})
    receipt = reg.finalize_round(fed, rnd, D("g1"), CID, decision, env.coord)
    events = reg.receipt_events(receipt)
    assert [e.name for e in events] == ["UpdateFlagged"] * 4 + ["RoundFinalized"]
    assert len(events[-1].args["included"]) == len(members) - 8 and len(events[-1].args["excluded"]) == 4
