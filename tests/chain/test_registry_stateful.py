"""Stateful property test of chained mode: the contract's head/accepted/turn always match a
plain Python model, whatever sequence of handoffs, rejections and skips (valid or not) is sent,
and no node ever holds the turn while its own handoff is the unaccepted head (so no node can
accept its own model, whatever its client does).

Runs on the embedded eth-tester chain only (cheap, in process); the same contract code runs on
Ganache and Anvil in ``test_registry.py``.
"""

from __future__ import annotations

import hashlib
import itertools

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from chainfl.chain import connect
from chainfl.chain import errors as E
from chainfl.chain.registry import Mode, Registry

CID = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
N_NODES = 3
_fresh = itertools.count()


def new_digest() -> bytes:
    return hashlib.sha256(f"model-{next(_fresh)}".encode()).digest()


class ChainedHead(RuleBasedStateMachine):
    reg = None  # set by the test: one registry on an in-memory chain; each example is a new task

    def __init__(self):
        super().__init__()
        a = self.reg.chain.accounts
        self.admin, self.nodes = a[0], list(a[1:1 + N_NODES])
        initial = new_digest()
        self.task = self.reg.create_task(new_digest(), CID, Mode.CHAINED, initial, CID, self.nodes, self.admin)
        # the model
        self.head = self.accepted = initial
        self.head_node = None
        self.expected = self.nodes[0].address
        self.seq = 0
        self.produced = {initial}  # every digest that was ever a head

    @rule(sender=st.integers(0, N_NODES - 1), stale=st.booleans(), nxt=st.integers(0, N_NODES - 1))
    def handoff(self, sender, stale, nxt):
        node, nxt_node = self.nodes[sender], self.nodes[nxt]
        parent = new_digest() if stale else self.head
        digest = new_digest()
        if node.address != self.expected:
            with pytest.raises(E.RegistryNotYourTurn):
                self.reg.record_handoff(self.task, parent, digest, CID, 5, 0.1, nxt_node, node)
        elif stale:
            with pytest.raises(E.RegistryStaleParent) as info:
                self.reg.record_handoff(self.task, parent, digest, CID, 5, 0.1, nxt_node, node)
            assert info.value.error_args["head"] == self.head
        elif nxt_node.address == node.address:
            with pytest.raises(E.RegistryHandoffToSelf):
                self.reg.record_handoff(self.task, parent, digest, CID, 5, 0.1, nxt_node, node)
        else:
            self.reg.record_handoff(self.task, parent, digest, CID, 5, 0.1, nxt_node, node)
            self.accepted, self.head, self.head_node = self.head, digest, node.address
            self.expected, self.seq = nxt_node.address, self.seq + 1
            self.produced.add(digest)

    @rule(sender=st.integers(0, N_NODES - 1), which=st.sampled_from(["head", "accepted", "other"]))
    def reject(self, sender, which):
        node = self.nodes[sender]
        digest = {"head": self.head, "accepted": self.accepted, "other": new_digest()}[which]
        if node.address != self.expected:
            with pytest.raises(E.RegistryNotYourTurn):
                self.reg.reject_handoff(self.task, digest, "r", node)
        elif digest != self.head or self.head == self.accepted:
            with pytest.raises(E.RegistryNothingToReject):
                self.reg.reject_handoff(self.task, digest, "r", node)
        else:
            self.reg.reject_handoff(self.task, digest, "r", node)
            self.head, self.head_node = self.accepted, None

    @rule(nxt=st.integers(0, N_NODES - 1))
    def skip(self, nxt):
        target = self.nodes[nxt].address
        if self.head != self.accepted and target == self.head_node:
            with pytest.raises(E.RegistrySkipToProducer):
                self.reg.skip_turn(self.task, self.nodes[nxt], self.admin)
            return
        self.reg.skip_turn(self.task, self.nodes[nxt], self.admin)
        self.expected = target

    @invariant()
    def contract_matches_model(self):
        t = self.reg.task(self.task)
        assert (t.head, t.accepted, t.head_node, t.expected, t.seq) == \
            (self.head, self.accepted, self.head_node, self.expected, self.seq)
        # the head is always either accepted or the one pending handoff, and came from a handoff
        assert t.head in self.produced and t.accepted in self.produced
        assert (t.head_node is None) == (t.head == t.accepted)
        # nobody holds the turn on its own unaccepted handoff
        assert t.head_node is None or t.expected != t.head_node


@pytest.fixture(scope="module")
def registry():
    with connect("eth-tester://memory") as chain:
        admin = chain.accounts[0]
        reg = Registry.deploy(chain, admin)
        reg.set_coordinator(admin, True, admin)
        for n in chain.accounts[1:1 + N_NODES]:
            reg.add_node(n, admin)
        yield reg


def test_chained_head_invariant(registry):
    ChainedHead.reg = registry
    run_state_machine_as_test(ChainedHead, settings=settings(
        max_examples=15, stateful_step_count=10, deadline=None, derandomize=True,
        suppress_health_check=[HealthCheck.too_slow]))
