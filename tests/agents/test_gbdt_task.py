"""Federated gbdt tasks end to end on the embedded chain: the trees on chain equal pooled training,
every round recomputes in the audit, out-of-bounds and label-flipped updates are flagged, and
``detect`` scores and explains the release."""

from __future__ import annotations

import numpy as np
import pytest

from chainfl.agents import modelio
from chainfl.aggregation.attacks import AttackConfig
from chainfl.audit import audit_task
from chainfl.errors import ConfigError
from chainfl.learning import gbdt as G
from chainfl.learning.evaluate import metrics_from_scores, predict_scores

SMALL = dict(n_trees=4, depth=2, concurrent_trees=2)


def _spec(world, **kw):
    return world.spec("federated", rounds=None, model_kind="gbdt", gbdt=SMALL, strategy=kw.pop("strategy", "sum"), **kw)


def test_gbdt_task_equals_pooled_training_and_audits(world):
    coordinator = world.coordinator()
    spec = _spec(world)
    cfg = modelio.boosting(spec)
    assert spec.rounds == cfg.rounds() == 1 + 4 + 1   # bins round, 4 staggered trees of depth 2
    task_id = coordinator.create_task(spec)
    agents = [world.agent(i, task_id) for i in range(3)]
    world.drive(coordinator, agents)

    assert world.registry.task(task_id).closed
    finals = world.events(task_id, "RoundFinalized")
    assert len(finals) == spec.rounds and all(len(f["included"]) == 3 for f in finals)
    # the release is the finished ensemble: bit for bit what pooled training on the same bins grows
    release, _ = modelio.load_model(world.store, coordinator.release.cid, coordinator.release.digest, spec)
    assert G.phase(release) == "done"
    pooled = G.fit(cfg, [(d.X, d.y) for d in world.datas])
    assert all(np.asarray(release[k]).tobytes() == pooled[k].tobytes() for k in pooled)
    X, y = world.test
    m = metrics_from_scores(predict_scores(modelio.model_config(spec), release, modelio.inputs(spec, X)), y,
                            coordinator.threshold)
    assert m["roc_auc"] > 0.85
    report = audit_task(world.chain, world.registry, world.store, task_id)
    assert report.ok, report.violations
    assert all(a["match"] for a in report.aggregates) and len(report.aggregates) == spec.rounds


def test_gbdt_boosted_histograms_are_flagged_out_of_bounds(world):
    coordinator = world.coordinator()
    task_id = coordinator.create_task(_spec(world))
    bad = world.accounts[2].address
    agents = [world.agent(i, task_id) for i in range(2)] + [
        world.agent(2, task_id, attack=AttackConfig("boosted", 0.34, factor=10.0))]
    world.drive(coordinator, agents)

    finals = world.events(task_id, "RoundFinalized")
    flagged_rounds = [f["round"] for f in finals if bad in f["excluded"] or bad not in f["included"]]
    assert len(flagged_rounds) == len(finals)          # every round, the bins round included
    report = audit_task(world.chain, world.registry, world.store, task_id)
    assert report.ok, report.violations
    kinds = {f.kind for f in report.findings if f.node == bad}
    assert kinds == {"flagged:bounds"}
    assert report.misbehaving() == {bad: {"flagged:bounds": len(finals)}}


def test_gbdt_label_flipper_is_screened(world5):
    world = world5
    coordinator = world.coordinator()
    spec = world.spec("federated", rounds=None, model_kind="gbdt",
                      gbdt=dict(n_trees=12, depth=3, concurrent_trees=3), strategy="screened-sum")
    task_id = coordinator.create_task(spec)
    flipper = world.accounts[0].address
    agents = [world.agent(0, task_id, attack=AttackConfig("label-flip", 0.2))] + [
        world.agent(i, task_id) for i in range(1, 5)]
    world.drive(coordinator, agents, max_steps=400)

    report = audit_task(world.chain, world.registry, world.store, task_id)
    assert report.ok, report.violations
    bad = report.misbehaving()
    assert set(bad) == {flipper}                      # nobody honest is blamed
    screened = bad[flipper].get("flagged:screening", 0)
    growing_after_warmup = spec.rounds - 1 - G.ConsistencyScreen().warmup_rounds
    assert screened >= growing_after_warmup - 1


def test_audit_catches_a_gbdt_aggregate_that_does_not_recompute(world, monkeypatch):
    from chainfl.agents import coordinator as coordinator_module

    real = coordinator_module.decide_round

    def tampered(*args, **kw):
        out = real(*args, **kw)
        if out.state is not None and G.phase(out.state) != "bins":
            out.state = {k: np.array(v, copy=True) for k, v in out.state.items()}
            out.state["base_score"][0] += np.float32(0.5)      # nudge the model
        return out

    monkeypatch.setattr(coordinator_module, "decide_round", tampered)
    coordinator = world.coordinator()
    task_id = coordinator.create_task(_spec(world))
    world.drive(coordinator, [world.agent(i, task_id) for i in range(3)])
    report = audit_task(world.chain, world.registry, world.store, task_id)
    assert not report.ok
    assert "aggregate-mismatch" in {v.kind for v in report.violations}


def test_gbdt_needs_federated_mode_and_rows_it_can_sum_exactly(world):
    with pytest.raises(ConfigError, match="federated"):
        world.spec("chained", rounds=None, model_kind="gbdt")
    with pytest.raises(ConfigError, match="at least 2 rounds"):
        world.spec("federated", rounds=1, model_kind="gbdt")
    # a short budget: shallower trees, as many as fit
    spec = world.spec("federated", rounds=3, model_kind="gbdt")
    cfg = modelio.boosting(spec)
    assert spec.rounds == 3 and cfg.depth == 2 and cfg.n_trees == 1
    with pytest.raises(ConfigError, match="krum"):
        world.spec("federated", rounds=None, model_kind="gbdt", strategy="krum")


def test_detect_scores_and_explains_a_gbdt_release(world):
    from chainfl.audit.detect import load_release, score_dataset
    from chainfl.data.datasets import Dataset

    coordinator = world.coordinator()
    task_id = coordinator.create_task(_spec(world))
    world.drive(coordinator, [world.agent(i, task_id) for i in range(3)])
    release, report = load_release(world.chain, world.registry, world.store, task_id)
    assert report.ok and release.model.kind == "gbdt"
    X, y = world.test
    ds = Dataset(X, y, list(release.feature_names), [f"0x{i:040x}" for i in range(len(y))], "test")
    scored = score_dataset(release, ds)
    cfg = release.model.boosting(X.shape[1])
    plain = {k: np.asarray(v) for k, v in release.state.items()}
    margin = G.predict_margin(cfg, plain, X)
    _, bias = G.contributions(cfg, plain, X)
    np.testing.assert_allclose(scored.attributions.sum(1) + bias, margin, atol=1e-5)
    np.testing.assert_allclose(scored.scores, 1 / (1 + np.exp(-margin)))
