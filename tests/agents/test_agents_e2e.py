"""End-to-end on the embedded chain: coordinator + node agents, chained and federated."""

import numpy as np

from chainfl.agents import modelio
from chainfl.audit import audit_task
from chainfl.storage.codec import decode_model, fetch_verified


def test_chained_task_runs_to_a_verified_release(world):
    coordinator = world.coordinator()
    spec = world.spec("chained", rounds=2)
    task_id = coordinator.create_task(spec)
    agents = [world.agent(i, task_id) for i in range(3)]

    world.drive(coordinator, agents)

    task = world.registry.task(task_id)
    handoffs = world.events(task_id, "HandoffRecorded")
    assert task.closed and task.seq == 6
    # each node in visiting order, twice; every parent is the previous head; nobody twice per turn
    assert [h["node"] for h in handoffs] == [a.address for a in world.accounts] * 2
    assert handoffs[0]["parent"] == world.events(task_id, "TaskCreated")[0]["initialDigest"]
    for prev, cur in zip(handoffs, handoffs[1:]):
        assert cur["parent"] == prev["digest"]
    assert [a.actions.count("handoff") for a in agents] == [2, 2, 2]
    # the release: final weights + threshold/scaler/features, verified by digest
    release = coordinator.release
    blob = fetch_verified(world.store, release.cid, release.digest)
    state, meta = decode_model(blob)
    final, _ = modelio.load_model(world.store, handoffs[-1]["cid"], handoffs[-1]["digest"], spec)
    assert meta["kind"] == "release" and meta["source"] == "0x" + handoffs[-1]["digest"].hex()
    assert 0 < meta["threshold"] < 1 and meta["reported_nodes"] == 3
    assert meta["feature_names"] == list(spec.feature_names) and meta["scaler"] == spec.scaler
    assert all(np.array_equal(state[k], final[k]) for k in final)
    assert audit_task(world.chain, world.registry, world.store, task_id).ok


def test_federated_task_each_node_submits_once_per_round(world):
    coordinator = world.coordinator()
    task_id = coordinator.create_task(world.spec("federated", rounds=2, strategy="fedavg"))
    agents = [world.agent(i, task_id) for i in range(3)]

    world.drive(coordinator, agents)

    task = world.registry.task(task_id)
    subs = world.events(task_id, "UpdateSubmitted")
    finals = world.events(task_id, "RoundFinalized")
    assert task.closed and task.round == 2
    assert sorted((s["round"], s["node"]) for s in subs) == sorted(
        (r, a.address) for r in (1, 2) for a in world.accounts)
    assert [f["round"] for f in finals] == [1, 2]
    assert all(sorted(f["included"]) == sorted(a.address for a in world.accounts) for f in finals)
    assert finals[1]["parent"] == finals[0]["digest"]
    report = audit_task(world.chain, world.registry, world.store, task_id)
    assert report.ok, report.violations


def test_federated_aggregate_is_independent_of_arrival_order(world):
    # same task settings, nodes submitting in opposite orders -> bit-identical aggregate weights
    # (the blobs differ only by the task id in their meta)
    weights, orders = [], []
    for order in ([0, 1, 2], [2, 1, 0]):
        coordinator = world.coordinator()
        spec = world.spec("federated", rounds=1, strategy="median")
        task_id = coordinator.create_task(spec)
        agents = [world.agent(i, task_id) for i in order]
        world.drive(coordinator, agents)
        orders.append([s["node"] for s in world.events(task_id, "UpdateSubmitted")])
        final = world.events(task_id, "RoundFinalized")[0]
        state, meta = modelio.load_model(world.store, final["cid"], final["digest"], spec)
        assert meta == {"kind": "aggregate", "task": task_id, "round": 1}
        weights.append(b"".join(v.tobytes() for v in state.values()))
    assert orders[0] == orders[1][::-1]
    assert weights[0] == weights[1]


def test_federated_server_momentum_is_applied_and_audited(world):
    # the coordinator passes the previous round's global model; the audit recomputes it bit for bit
    import dataclasses

    from chainfl.aggregation.strategies import Strategy

    coordinator = world.coordinator()
    spec = world.spec("federated", rounds=3, strategy="fedavg")
    spec = dataclasses.replace(spec, strategy=Strategy(name="fedavgm", rule="fedavg",
                                                       server_momentum=0.9).spec())
    task_id = coordinator.create_task(spec)
    agents = [world.agent(i, task_id) for i in range(3)]

    world.drive(coordinator, agents)

    assert world.registry.task(task_id).closed
    report = audit_task(world.chain, world.registry, world.store, task_id)
    assert report.ok, [str(v) for v in report.violations]
    assert [a["match"] for a in report.aggregates] == [True, True, True]
