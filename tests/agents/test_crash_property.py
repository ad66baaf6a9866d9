"""Property: whatever the schedule of steps, crashes and restarts of the coordinator and the node
agents — including a node killed between storing its result and submitting it, and the
coordinator killed between deciding a round and recording it — the task finishes, nobody submits
twice, and the audit passes. A restart is a new object that knows only what the chain says."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chainfl.agents.coordinator import Coordinator
from chainfl.agents.node import NodeAgent
from chainfl.audit import audit_task

from conftest import make_world

N = 3


class Crash(RuntimeError):
    pass


class FragileAgent(NodeAgent):
    """Crashes once, after storing its result and before submitting it, when armed."""

    armed = False

    def _before_submit(self, stored):
        if self.armed:
            self.armed = False
            raise Crash("node killed between store and submit")


class FragileRegistry:
    """The registry, but the next round decision or close raises (the coordinator dies first)."""

    def __init__(self, registry):
        self._registry = registry
        self.armed = False

    def _maybe(self, fn):
        def call(*args, **kwargs):
            if self.armed:
                self.armed = False
                raise Crash("coordinator killed before its decision reached the chain")
            return fn(*args, **kwargs)
        return call

    def __getattr__(self, name):
        attr = getattr(self._registry, name)
        if name in ("finalize_round", "abandon_round", "close_task", "skip_turn", "open_round"):
            return self._maybe(attr)
        return attr


ACTIONS = st.lists(st.tuples(st.integers(0, N), st.sampled_from(["step", "step", "step", "restart", "kill-mid"])),
                   min_size=10, max_size=40)


@pytest.mark.slow
@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(mode=st.sampled_from(["federated", "chained", "federated-peer"]), schedule=ACTIONS)
def test_random_crashes_and_restarts_end_with_a_finished_task_and_a_passing_audit(tmp_path_factory, mode, schedule):
    w = make_world(tmp_path_factory.mktemp("crash"), n=N, rows=300)
    try:
        fragile = FragileRegistry(w.registry)
        start = w.chain.block_number()

        def new_coordinator(task_id=None):
            c = Coordinator(fragile, w.store, w.coordinator_account, reports=w.box, report_timeout=0)
            if task_id is not None:
                c.attach(task_id, start_block=start)
            return c

        if mode == "federated-peer":           # peer reports, their wait and the round's evidence
            mode, spec = "federated", w.spec("federated", rounds=2, strategy="fedavg", peer={"seconds": 5})
        else:
            spec = w.spec(mode, rounds=2, strategy="screened-fedavg") if mode == "federated" else w.spec(mode, rounds=1)
        coordinator = new_coordinator()
        task_id = coordinator.create_task(spec)

        def new_agent(i):
            return FragileAgent(w.registry, w.store, w.accounts[i], task_id, w.datas[i], reports=w.box,
                                start_block=start)

        actors = {0: coordinator, **{i + 1: new_agent(i) for i in range(N)}}

        def act(k: int, what: str) -> None:
            if what == "restart":
                actors[k] = new_coordinator(task_id) if k == 0 else new_agent(k - 1)
            elif what == "kill-mid":
                if k == 0:
                    fragile.armed = True
                else:
                    actors[k].armed = True
            try:
                actors[k].step()
            except Crash:
                actors[k] = new_coordinator(task_id) if k == 0 else new_agent(k - 1)

        for k, what in schedule:
            act(k, what)
        fragile.armed = False
        for _ in range(200):                              # then everybody works until the end
            if w.registry.task(task_id).closed:
                break
            for k in sorted(actors):
                act(k, "step")
        task = w.registry.task(task_id)
        assert task.closed, f"task not finished after the schedule {schedule}"
        name = "UpdateSubmitted" if mode == "federated" else "HandoffRecorded"
        sent = [(e["round"] if mode == "federated" else e["seq"], e["node"]) for e in w.events(task_id, name)]
        assert len(sent) == len(set(sent))                # nobody twice in a round / a handoff once per seq
        report = audit_task(w.chain, w.registry, w.store, task_id)
        assert report.ok, [str(v) for v in report.violations]
    finally:
        w.chain.close()
