"""Attackers on chain: screened federated rounds flag them, the chained gate rejects them."""

from chainfl.agents import modelio
from chainfl.aggregation.attacks import AttackConfig
from chainfl.data.scaling import Scaler
from chainfl.learning.evaluate import metrics_from_scores, predict_scores


def _test_f1(world, spec, digest, cid, threshold):
    X, y = world.test                      # never seen by any node
    state, _ = modelio.load_model(world.store, cid, digest, spec)
    scores = predict_scores(modelio.model_config(spec), state, Scaler.from_dict(spec.scaler).transform(X))
    return metrics_from_scores(scores, y, threshold)["f1"]


def _federated(world, attacker: int | None, strategy: str, rounds: int = 2):
    coordinator = world.coordinator()
    spec = world.spec("federated", rounds=rounds, strategy=strategy)
    task_id = coordinator.create_task(spec)
    boosted = AttackConfig(kind="boosted", factor=10.0)
    agents = [world.agent(i, task_id, attack=boosted if i == attacker else None) for i in range(5)]
    world.drive(coordinator, agents)
    final = world.events(task_id, "RoundFinalized")[-1]
    return task_id, spec, _test_f1(world, spec, final["digest"], final["cid"], coordinator.threshold)


def test_boosted_attacker_is_flagged_on_chain_and_the_robust_run_stays_close(world5):
    attacker = world5.accounts[2].address

    _, _, clean_f1 = _federated(world5, None, "screened-fedavg")
    task_id, _, attacked_f1 = _federated(world5, 2, "screened-fedavg")

    flags = world5.events(task_id, "UpdateFlagged")
    assert {(f["round"], f["node"]) for f in flags} >= {(1, attacker), (2, attacker)}
    assert all(f["reason"].startswith("screening: ") for f in flags)
    assert all(attacker not in f["included"] for f in world5.events(task_id, "RoundFinalized"))
    assert world5.registry.node(attacker).flags == 2
    honest_flags = sum(world5.registry.node(a.address).flags for a in world5.accounts if a.address != attacker)
    assert honest_flags <= 1                     # at most one false flag among 8 honest updates
    assert clean_f1 > 0.6
    assert abs(attacked_f1 - clean_f1) <= 0.03, (clean_f1, attacked_f1)


def test_chained_gate_rejects_a_boosted_model_on_chain(world):
    coordinator = world.coordinator()
    task_id = coordinator.create_task(world.spec("chained", rounds=2))
    boosted = AttackConfig(kind="boosted", factor=10.0)
    agents = [world.agent(i, task_id, attack=boosted if i == 1 else None) for i in range(3)]

    world.drive(coordinator, agents)

    rejections = world.events(task_id, "HandoffRejected")
    assert rejections, "the poisoned handoffs were accepted"
    assert {r["producer"] for r in rejections} == {world.accounts[1].address}
    assert all(r["node"] == world.accounts[2].address for r in rejections)
    assert world.registry.node(world.accounts[1].address).rejections_received == len(rejections)
