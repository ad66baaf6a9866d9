"""Chained newton tasks end to end, on the embedded chain and the real daemons: the release is
pooled Newton of the nodes' rows, a boosted contribution is rejected on its bounds, and the
audit redoes every receiver's check — an honest handoff rejected is held against the rejecter,
a bad one accepted is a violation."""

from __future__ import annotations

import numpy as np
import pytest

from chainfl.agents import modelio
from chainfl.agents.node import NodeAgent
from chainfl.aggregation.attacks import AttackConfig
from chainfl.audit import audit_task
from chainfl.audit.detect import Release, score_dataset
from chainfl.data.scaling import Scaler
from chainfl.errors import ConfigError
from chainfl.learning import newton as N
from chainfl.learning.evaluate import metrics_from_scores, predict_scores


def _spec(world, rounds=3):
    return world.spec("chained", rounds=rounds, model_kind="newton")


def test_newton_task_is_pooled_newton_and_audits(backend_world):
    world = backend_world
    coordinator = world.coordinator()
    spec = _spec(world)
    assert spec.gate == {} and spec.model["kind"] == "newton"
    task_id = coordinator.create_task(spec)
    world.drive(coordinator, [world.agent(i, task_id) for i in range(3)])

    assert world.registry.task(task_id).closed
    assert len(world.events(task_id, "HandoffRecorded")) == 9 and not world.events(task_id, "HandoffRejected")
    release, meta = modelio.load_model(world.store, coordinator.release.cid, coordinator.release.digest, spec)
    cfg = modelio.fitting(spec)
    assert int(release["pass"][0]) == 2 and int(release["count"][0]) == 3
    np.testing.assert_allclose(N.weights(cfg, release), N.pooled_newton(cfg, np.concatenate([d.X for d in world.datas]),
                                                                     np.concatenate([d.y for d in world.datas]), 3),
                               rtol=1e-8, atol=1e-8)
    X, y = world.test
    m = metrics_from_scores(predict_scores(modelio.model_config(spec), release, modelio.inputs(spec, X)), y,
                            coordinator.threshold)
    assert m["roc_auc"] > 0.9
    report = audit_task(world.chain, world.registry, world.store, task_id)
    assert report.ok, report.violations
    assert not report.findings
    # detect scores with the release and explains with per-feature log-odds that add up
    from chainfl.learning.models import ModelConfig
    from chainfl.data.datasets import Dataset

    rel = Release(state=release, model=ModelConfig.from_dict(spec.model), scaler=Scaler.from_dict(spec.scaler),
                  feature_names=spec.feature_names, threshold=coordinator.threshold, task_id=task_id,
                  digest="0x" + coordinator.release.digest.hex(), cid=coordinator.release.cid, source="release")
    ds = Dataset(X[:20], y[:20], list(spec.feature_names), [f"0x{i:040x}" for i in range(20)], "test")
    scored = score_dataset(rel, ds)
    np.testing.assert_allclose(scored.scores, N.predict_proba(cfg, release, X[:20]))
    contrib, base = N.contributions(cfg, release, X[:20])
    np.testing.assert_allclose(scored.attributions, contrib)
    assert scored.ranked(explain=2)[0]["score"] >= scored.ranked(explain=2)[-1]["score"]


def test_boosted_contributions_are_rejected_on_their_bounds(backend_world):
    world = backend_world
    coordinator = world.coordinator()
    task_id = coordinator.create_task(_spec(world))
    bad = world.accounts[2].address
    agents = [world.agent(0, task_id), world.agent(1, task_id),
              world.agent(2, task_id, attack=AttackConfig("boosted", 0.34, factor=10.0))]
    world.drive(coordinator, agents)

    rejections = world.events(task_id, "HandoffRejected")
    assert len(rejections) == 3 and all(r["producer"] == bad for r in rejections)
    assert all(r["reason"].startswith("bounds: ") for r in rejections)
    report = audit_task(world.chain, world.registry, world.store, task_id)
    assert report.ok, report.violations
    assert report.misbehaving() == {bad: {"rejected:bounds": 3}}


class _Rejecter(NodeAgent):
    """Rejects whatever it receives, claiming a bounds failure."""

    def _check_incoming(self, task):
        return False, "bounds: gradient sum exceeds the rows claimed (made up)", None


class _Colluder(NodeAgent):
    """Accepts whatever it receives, unchecked."""

    def _check_incoming(self, task):
        return True, "accepted unchecked", self._load(task.head)


def test_the_audit_blames_a_receiver_that_rejects_an_honest_handoff(world):
    coordinator = world.coordinator()
    task_id = coordinator.create_task(_spec(world, rounds=2))
    rejecter, honest = world.accounts[1].address, world.accounts[0].address
    agents = [world.agent(0, task_id), world.agent(1, task_id, cls=_Rejecter), world.agent(2, task_id)]
    world.drive(coordinator, agents)

    assert {r["producer"] for r in world.events(task_id, "HandoffRejected")} == {honest}
    report = audit_task(world.chain, world.registry, world.store, task_id)
    assert report.ok, report.violations
    mis = report.misbehaving()
    assert honest not in mis
    assert set(mis) == {rejecter} and set(mis[rejecter]) == {"rejected-unjustified"}
    # the honest node's pass-0 handoff was valid, so its later contributions are checked against it


def test_an_accepted_boosted_handoff_is_a_violation(world):
    coordinator = world.coordinator()
    task_id = coordinator.create_task(_spec(world, rounds=2))
    agents = [world.agent(0, task_id, cls=_Colluder), world.agent(1, task_id),
              world.agent(2, task_id, attack=AttackConfig("boosted", 0.34, factor=10.0))]
    world.drive(coordinator, agents)

    assert not world.events(task_id, "HandoffRejected")
    report = audit_task(world.chain, world.registry, world.store, task_id)
    assert not report.ok
    bad = [v for v in report.violations if v.kind == "handoff-newton"]
    assert bad and all("scaled contribution" in v.message for v in bad)


def test_newton_needs_chained_mode_and_grid_counts(world):
    with pytest.raises(ConfigError, match="--mode chained"):
        world.spec("federated", rounds=3, model_kind="newton")
    from chainfl.agents.setup import build_spec

    with pytest.raises(ConfigError, match="node stats --bins"):
        build_spec(mode="chained", nodes=[a.address for a in world.accounts], rounds=2,
                   stats=[d.stats() for d in world.datas], model_kind="newton")


class _Crafter(NodeAgent):
    """Honest at pass 0; later hands on sums no rows can give: |dG| = n on every weight, Hessian
    only on the bias (each entry within its own bound)."""

    def _newton(self, state, X, y, step):
        out, n, loss = super()._newton(state, X, y, step)
        if step == 0:
            return out, n, loss
        base = N.pass_base(state, out)
        D = len(out["w"])
        i, j = np.triu_indices(D)
        dH = np.zeros_like(base["H"])
        dH[(i == D - 1) & (j == D - 1)] = n / 4
        return dict(out, G=base["G"] + n * np.sign(out["w"] + 1e-12), H=base["H"] + dH), n, loss


def test_crafted_sums_are_rejected_against_the_producers_own_rows(world):
    coordinator = world.coordinator()
    task_id = coordinator.create_task(_spec(world, rounds=3))
    crafter = world.accounts[2].address
    agents = [world.agent(0, task_id), world.agent(1, task_id), world.agent(2, task_id, cls=_Crafter)]
    world.drive(coordinator, agents)

    rejections = world.events(task_id, "HandoffRejected")
    assert len(rejections) == 2 and {r["producer"] for r in rejections} == {crafter}
    assert all("rows" in r["reason"] for r in rejections)
    report = audit_task(world.chain, world.registry, world.store, task_id)
    assert report.ok, report.violations
    assert report.misbehaving() == {crafter: {"rejected:bounds": 2}}


class _Steerer(NodeAgent):
    """Hands its model to node 1 instead of the next node in the task's order (to visit an
    accomplice and skip the others)."""

    def _ensure_spec(self) -> bool:
        if not super()._ensure_spec():
            return False
        spec, target = self.spec, self.spec.nodes[1]

        class Steered:
            def __getattr__(self, name):
                return getattr(spec, name)

            def next_node(self, node):
                return target if node.lower() == self_address.lower() else spec.next_node(node)

        self_address = self.address
        self.spec = Steered()
        return True


def test_a_handoff_to_anyone_but_the_next_node_is_rejected(world):
    coordinator = world.coordinator()
    task_id = coordinator.create_task(_spec(world, rounds=2))
    steerer = world.accounts[2].address
    agents = [world.agent(0, task_id), world.agent(1, task_id), world.agent(2, task_id, cls=_Steerer)]
    world.drive(coordinator, agents)

    rejections = world.events(task_id, "HandoffRejected")
    assert rejections and all(r["producer"] == steerer and r["reason"].startswith("order: ") for r in rejections)
    report = audit_task(world.chain, world.registry, world.store, task_id)
    assert report.ok, report.violations
    assert set(report.misbehaving()) == {steerer}
    assert set(report.misbehaving()[steerer]) == {"rejected:order"}


@pytest.mark.parametrize("kind", ["copy", "inflated", "sign-flip", "free-rider"])
def test_protocol_and_model_attackers_are_rejected_and_only_they_are_named(world, kind):
    coordinator = world.coordinator()
    task_id = coordinator.create_task(_spec(world, rounds=2))
    bad = world.accounts[2].address
    agents = [world.agent(0, task_id), world.agent(1, task_id),
              world.agent(2, task_id, attack=AttackConfig(kind, 0.34, factor=10.0))]
    world.drive(coordinator, agents)

    rejections = world.events(task_id, "HandoffRejected")
    assert rejections and all(r["producer"] == bad for r in rejections)
    report = audit_task(world.chain, world.registry, world.store, task_id)
    assert report.ok, report.violations
    assert set(report.misbehaving()) == {bad}
