"""The audit accepts a federated round only as an honest coordinator makes it: the recorded
strategy over *every* verifiable update read (a prefix, in block order, of the submissions), with
exactly the strategy's included and flagged nodes on chain; server momentum is recomputed too."""

from __future__ import annotations

import pytest

from chainfl.aggregation.strategies import Strategy, Update
from chainfl.audit import audit_task
from chainfl.chain import connect
from chainfl.learning.models import flatten, unflatten
from chainfl.storage import open_store
from chainfl.storage.codec import digest, encode_model

from .builders import decode, record_federated


def _submit(rec, store, r, i, g_state):
    node = rec.nodes[i]
    state = {k: v + 0.01 * (i + 1) * (1 if k.endswith("weight") else -1) for k, v in g_state.items()}
    blob = encode_model(state, {"kind": "update", "round": r})
    cid = store.put(blob)
    rec.registry.submit_update(rec.task_id, r, rec.digests[-1], digest(blob), cid, 10 + i, 0.5, node)
    return Update(node=node.address, digest=digest(blob), state_vec=flatten(state), n_samples=10 + i), cid


def _finalize(rec, store, r, g_state, updates, flags=None):
    """The coordinator aggregates ``updates`` with the task's strategy, flags ``flags``, finalizes."""
    strat = Strategy.from_spec(rec.spec.strategy)
    result = strat.aggregate(updates, reference=flatten(g_state))
    for node, reason in (flags or {}).items():
        rec.registry.flag_update(rec.task_id, r, node, reason, rec.coordinator)
    blob = encode_model(unflatten(result.vector, g_state), {"kind": "aggregate", "round": r})
    cid = store.put(blob)
    rec.registry.finalize_round(rec.task_id, r, digest(blob), cid, result.included, rec.coordinator)
    return cid


@pytest.fixture
def round2(tmp_path):
    """A fedavg task with one honest round; yields (chain, store, rec, r, global state) for round 2."""
    store = open_store((tmp_path / "store").as_uri())
    with connect("eth-tester://memory") as chain:
        rec = record_federated(chain, store, n_nodes=3, rounds=1, strategy="fedavg", close=False)
        r = rec.registry.open_round(rec.task_id, chain.latest_timestamp() + 3600, rec.coordinator)
        g_state, _ = decode(store, rec.cids[-1])
        yield chain, store, rec, r, g_state


@pytest.mark.parametrize("omitted", [0, 1])
def test_omitting_an_honest_update_without_flagging_it_is_named(round2, omitted):
    chain, store, rec, r, g = round2
    subs = [_submit(rec, store, r, i, g) for i in range(3)]
    _finalize(rec, store, r, g, [u for i, (u, _) in enumerate(subs) if i != omitted])
    report = audit_task(chain, rec.registry, store, rec.task_id)
    assert not report.ok
    node, cid = rec.nodes[omitted].address, subs[omitted][1]
    (v,) = [v for v in report.violations if v.kind == "update-ignored"]
    assert v.round == 2 and v.node == node and v.cid == cid
    assert f"round 2: node {node} submitted (CID {cid}) but is neither included nor flagged" in str(v)


@pytest.mark.parametrize("victim", [0, 2])
def test_flagging_an_honest_update_with_a_made_up_reason_is_named(round2, victim):
    chain, store, rec, r, g = round2
    subs = [_submit(rec, store, r, i, g) for i in range(3)]
    node = rec.nodes[victim].address
    _finalize(rec, store, r, g, [u for i, (u, _) in enumerate(subs) if i != victim],
              flags={node: "screened out: made up"})
    report = audit_task(chain, rec.registry, store, rec.task_id)
    assert not report.ok
    (v,) = [v for v in report.violations if v.kind == "flag-inconsistent"]
    assert v.round == 2 and v.node == node and v.cid == subs[victim][1]
    assert f"round 2: node {node} flagged on chain but the recorded strategy does not flag it" in str(v)


def test_late_submission_after_the_coordinators_read_passes(round2):
    chain, store, rec, r, g = round2
    subs = [_submit(rec, store, r, i, g) for i in range(2)]
    # the coordinator has read blocks up to here and aggregates these two ...
    strat = Strategy.from_spec(rec.spec.strategy)
    result = strat.aggregate([u for u, _ in subs], reference=flatten(g))
    blob = encode_model(unflatten(result.vector, g), {"kind": "aggregate", "round": r})
    cid = store.put(blob)
    # ... while the third node's update lands in a later block, before the finalize transaction
    _submit(rec, store, r, 2, g)
    rec.registry.finalize_round(rec.task_id, r, digest(blob), cid, result.included, rec.coordinator)
    report = audit_task(chain, rec.registry, store, rec.task_id)
    assert report.ok, [str(v) for v in report.violations]
    last = report.aggregates[-1]
    assert last["match"] and last["prefix"] == 2 and last["late"] == [rec.nodes[2].address]


def test_honest_history_recomputes_every_aggregate_from_all_updates(tmp_path):
    store = open_store((tmp_path / "store").as_uri())
    with connect("eth-tester://memory") as chain:
        rec = record_federated(chain, store, n_nodes=4, rounds=2, strategy="screened-fedavg", poison=1)
        report = audit_task(chain, rec.registry, store, rec.task_id)
    assert report.ok, [str(v) for v in report.violations]
    assert [(a["match"], a["prefix"], a["late"]) for a in report.aggregates] == [(True, 4, []), (True, 4, [])]
    assert all(a["recomputed"] == a["digest"] for a in report.aggregates)


def test_server_momentum_is_recomputed_bit_identically(tmp_path):
    strat = Strategy(name="fedavgm", rule="fedavg", server_momentum=0.9)
    store = open_store((tmp_path / "store").as_uri())
    with connect("eth-tester://memory") as chain:
        rec = record_federated(chain, store, n_nodes=3, rounds=3, strategy=strat)
        report = audit_task(chain, rec.registry, store, rec.task_id)
    assert report.ok, [str(v) for v in report.violations]
    assert [a["match"] for a in report.aggregates] == [True, True, True]
    assert all(a["recomputed"] == a["digest"] for a in report.aggregates)
    # momentum mattered: round 3's aggregate recomputed without the previous model differs
    g2, _ = decode(store, rec.cids[-5])      # round 3's global model (round 2's aggregate)
    ups = []
    for d, cid, node in zip(rec.digests[-4:-1], rec.cids[-4:-1], rec.nodes):
        st, _ = decode(store, cid)
        ups.append(Update(node=node.address, digest=d, state_vec=flatten(st), n_samples=40))
    final, _ = decode(store, rec.cids[-1])
    plain = strat.aggregate(ups, reference=flatten(g2)).vector
    assert not (plain == flatten(final)).all()


def test_release_with_the_final_weights_but_another_scaler_is_refused(tmp_path):
    from chainfl.audit.detect import ModelRefusedError, load_release

    from .builders import release_meta

    store = open_store((tmp_path / "store").as_uri())
    with connect("eth-tester://memory") as chain:
        rec = record_federated(chain, store, n_nodes=3, rounds=1, strategy="fedavg", close=False)
        final, _ = decode(store, rec.cids[-1])                  # the right weights ...
        meta = release_meta(rec.spec, 0.5)
        meta["scaler"] = {**meta["scaler"], "mean": [m + 1.0 for m in meta["scaler"]["mean"]]}   # ... wrong scaling
        blob = encode_model(final, meta)
        cid = store.put(blob)
        rec.registry.close_task(rec.task_id, digest(blob), cid, rec.coordinator)
        report = audit_task(chain, rec.registry, store, rec.task_id)
        (v,) = report.violations
        assert v.kind == "release-meta" and v.cid == cid and "scaler" in str(v)
        assert report.release["matches_final"] == "head"
        with pytest.raises(ModelRefusedError, match="fails its audit"):
            load_release(chain, rec.registry, store, rec.task_id)
        with pytest.raises(ModelRefusedError, match="different from the task spec"):
            load_release(chain, rec.registry, store, rec.task_id, audit=False)


def test_detect_takes_scaler_features_and_model_from_the_spec(tmp_path):
    from chainfl.audit.detect import load_release

    store = open_store((tmp_path / "store").as_uri())
    with connect("eth-tester://memory") as chain:
        rec = record_federated(chain, store, n_nodes=3, rounds=1, strategy="fedavg")
        release, report = load_release(chain, rec.registry, store, rec.task_id)
    assert report.ok
    assert release.scaler.to_dict() == rec.spec.scaler
    assert tuple(release.feature_names) == tuple(rec.spec.feature_names)
    assert release.model.to_dict() == rec.spec.model and release.threshold == rec.threshold
