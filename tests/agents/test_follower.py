import pytest

from chainfl.agents.follower import EventFollower
from chainfl.chain.registry import Mode


def test_follower_reads_bounded_ranges_once_and_keeps_the_cids(world):
    reg, admin = world.registry, world.coordinator_account
    reg.set_coordinator(admin.address, True, admin)
    for a in world.accounts:
        reg.add_node(a.address, admin)
    start = world.chain.block_number()
    d = [bytes([i]) * 32 for i in range(1, 6)]
    task_id = reg.create_task(d[0], "bafkcfg", Mode.CHAINED, d[1], "bafkinit", world.accounts, admin)
    reg.record_handoff(task_id, d[1], d[2], "bafk2", 5, 0.5, world.accounts[1].address, world.accounts[0])
    reg.record_handoff(task_id, d[2], d[3], "bafk3", 5, 0.4, world.accounts[2].address, world.accounts[1])
    other = reg.create_task(d[0], "bafkcfg", Mode.FEDERATED, d[4], "bafkother", world.accounts, admin)
    latest = world.chain.block_number()

    follower = EventFollower(reg, task_id, start_block=start, max_blocks=2)
    seen, cursors = [], []
    while follower.cursor <= latest:
        before = follower.cursor
        seen += follower.poll()
        cursors.append((before, follower.cursor))

    assert all(after - before <= 2 for before, after in cursors)          # bounded per poll
    assert [e.name for e in seen] == ["TaskCreated", "HandoffRecorded", "HandoffRecorded"]   # once each
    assert follower.poll() == []                                          # nothing new: nothing re-read
    h = follower.history
    assert h.created["configCid"] == "bafkcfg" and h.created_block >= start
    assert h.nodes == [a.address for a in world.accounts]
    assert h.cid_of(d[1]) == "bafkinit" and h.cid_of(d[3]) == "bafk3"
    assert all(e.args["taskId"] == task_id for e in seen) and other != task_id
    assert d[4] not in h.cids                                            # another task's model


class _CountingRegistry:
    """The registry, counting how many events its log queries return (everything else delegated)."""

    def __init__(self, registry):
        self._registry, self.events_read = registry, 0

    def events(self, *args, **kwargs):
        out = self._registry.events(*args, **kwargs)
        self.events_read += len(out)
        return out

    def __getattr__(self, name):
        return getattr(self._registry, name)


def _federated_run(world, shared: bool):
    from chainfl.agents import modelio
    from chainfl.agents.coordinator import Coordinator
    from chainfl.agents.node import NodeAgent
    from chainfl.learning.models import flatten

    reg = _CountingRegistry(world.registry)
    coordinator = Coordinator(reg, world.store, world.coordinator_account, reports=world.box)
    start = world.chain.block_number()
    spec = world.spec("federated", rounds=2, strategy="fedavg")
    task_id = coordinator.create_task(spec)
    agents = [NodeAgent(reg, world.store, a, task_id, d, reports=world.box, start_block=start,
                        follower=coordinator.follower if shared else None)
              for a, d in zip(world.accounts, world.datas)]
    world.drive(coordinator, agents)
    # the blobs name their task, so compare the weights of each round's aggregate
    weights = [flatten(modelio.load_model(world.store, e["cid"], e["digest"], spec)[0]).tobytes()
               for e in world.events(task_id, "RoundFinalized")]
    return reg.events_read, weights, len(world.events(task_id, "UpdateSubmitted"))


def test_agents_sharing_one_follower_read_each_event_once_and_train_the_same(world5):
    own_reads, own_models, own_subs = _federated_run(world5, shared=False)
    shared_reads, shared_models, shared_subs = _federated_run(world5, shared=True)
    assert own_subs == shared_subs == 2 * 5                       # every node, every round, once
    assert own_models == shared_models                            # same aggregates, byte for byte
    # 6 followers (coordinator + 5 agents) each read every event vs one follower reading them once
    assert shared_reads * 4 < own_reads, (shared_reads, own_reads)


def test_a_follower_of_another_task_is_refused(world):
    from chainfl.agents.node import NodeAgent
    from chainfl.errors import AgentError

    follower = EventFollower(world.registry, task_id=7)
    with pytest.raises(AgentError, match="shared follower follows task 7"):
        NodeAgent(world.registry, world.store, world.accounts[0], 8, world.datas[0], follower=follower)


def test_federated_state_from_events_equals_the_chain_at_every_step(world):
    from chainfl.agents.follower import EventFollower

    coordinator = world.coordinator()
    start = world.chain.block_number()
    task_id = coordinator.create_task(world.spec("federated", rounds=2, strategy="fedavg"))
    agents = [world.agent(i, task_id, start_block=start) for i in range(3)]
    follower = EventFollower(world.registry, task_id, start_block=start)
    fields = ("mode", "closed", "round_open", "coordinator", "seq", "deadline", "head", "accepted")
    seen = set()
    for _ in range(60):
        follower.catch_up()
        derived, chain = follower.history.federated_state(task_id), world.registry.task(task_id)
        assert {f: getattr(derived, f) for f in fields} == {f: getattr(chain, f) for f in fields}
        seen.add((chain.seq, chain.round_open, chain.closed))
        if coordinator.step() == "done":
            break
        for a in agents:
            a.step()
    follower.catch_up()
    assert follower.history.federated_state(task_id).closed and world.registry.task(task_id).closed
    # before round 1, open and finalized rounds, and the closed task were all compared
    assert {(0, False, False), (1, True, False), (1, False, False), (2, True, False)} <= seen
