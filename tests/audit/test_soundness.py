"""The audit accepts a federated round only as an honest coordinator decides it: the recorded
strategy (through :func:`chainfl.aggregation.decision.decide_round`) over *every* update submitted
to the round — the contract refuses a decision that leaves one out — with exactly the strategy's
included, excluded and flagged nodes on chain; server momentum is recomputed too."""

from __future__ import annotations

import pytest

from chainfl.aggregation.decision import Candidate, decide_round
from chainfl.aggregation.strategies import Strategy, Update
from chainfl.audit import audit_task
from chainfl.chain import connect
from chainfl.chain import errors as E
from chainfl.chain.registry import RoundDecision
from chainfl.learning.models import flatten, unflatten
from chainfl.storage import open_store
from chainfl.storage.codec import digest, encode_model

from .builders import decode, record_federated


def _submit(rec, store, r, i, g_state):
    node = rec.nodes[i]
    state = {k: v + 0.01 * (i + 1) * (1 if k.endswith("weight") else -1) for k, v in g_state.items()}
    meta = {"kind": "update", "task": rec.task_id, "node": node.address, "step": r}
    blob = encode_model(state, meta)
    cid = store.put(blob)
    rec.registry.submit_update(rec.task_id, r, rec.digests[-1], digest(blob), cid, 10 + i, 0.5, node)
    return Candidate(node.address, digest(blob), 10 + i, vector=flatten(state), meta=meta), cid


def _finalize(rec, store, r, g_state, candidates, *, decision=None):
    """The coordinator decides on ``candidates`` with the task's strategy and finalizes with the
    aggregate — and with ``decision`` instead of the strategy's own when given (a dishonest one)."""
    strat = Strategy.from_spec(rec.spec.strategy)
    outcome = decide_round(candidates, strat, task_id=rec.task_id, round_=r, reference=flatten(g_state))
    blob = encode_model(unflatten(outcome.vector, g_state), {"kind": "aggregate", "round": r})
    cid = store.put(blob)
    decision = decision or RoundDecision(outcome.included, outcome.excluded, outcome.flagged)
    rec.registry.finalize_round(rec.task_id, r, digest(blob), cid, decision, rec.coordinator)
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
def test_an_update_left_out_of_the_decision_is_refused_on_chain(round2, omitted):
    chain, store, rec, r, g = round2
    subs = [_submit(rec, store, r, i, g) for i in range(3)]
    kept = [c for i, (c, _) in enumerate(subs) if i != omitted]
    with pytest.raises(E.RegistryDecisionCount) as info:
        _finalize(rec, store, r, g, kept, decision=RoundDecision(included=[c.node for c in kept]))
    assert info.value.error_args == {"taskId": rec.task_id, "round": r, "decided": 2, "submitted": 3}


@pytest.mark.parametrize("victim", [0, 2])
def test_excluding_an_honest_update_without_blame_is_named(round2, victim):
    chain, store, rec, r, g = round2
    subs = [_submit(rec, store, r, i, g) for i in range(3)]
    node = rec.nodes[victim].address
    others = [c.node for i, (c, _) in enumerate(subs) if i != victim]
    _finalize(rec, store, r, g, [c for c, _ in subs], decision=RoundDecision(included=others, excluded=[node]))
    report = audit_task(chain, rec.registry, store, rec.task_id)
    assert not report.ok
    kinds = {v.kind for v in report.violations}
    assert {"included-inconsistent", "excluded-inconsistent"} <= kinds
    (v,) = [v for v in report.violations if v.kind == "excluded-inconsistent"]
    assert v.round == 2 and node in str(v)


@pytest.mark.parametrize("victim", [0, 2])
def test_flagging_an_honest_update_with_a_made_up_reason_is_named(round2, victim):
    chain, store, rec, r, g = round2
    subs = [_submit(rec, store, r, i, g) for i in range(3)]
    node = rec.nodes[victim].address
    others = [c.node for i, (c, _) in enumerate(subs) if i != victim]
    _finalize(rec, store, r, g, [c for c, _ in subs],
              decision=RoundDecision(included=others, flagged={node: "screening: made up"}))
    report = audit_task(chain, rec.registry, store, rec.task_id)
    assert not report.ok
    (v,) = [v for v in report.violations if v.kind == "flag-inconsistent"]
    assert v.round == 2 and v.node == node and v.cid == subs[victim][1]
    assert f"round 2: node {node} is flagged on chain ('screening: made up'), but the recorded strategy does " \
           f"not flag it" in str(v)


def test_a_submission_after_the_coordinators_read_makes_it_decide_again(round2):
    chain, store, rec, r, g = round2
    subs = [_submit(rec, store, r, i, g) for i in range(2)]
    # the coordinator has read these two and decides on them, but a third lands before its finalize
    _submit(rec, store, r, 2, g)
    with pytest.raises(E.RegistryDecisionCount):
        _finalize(rec, store, r, g, [c for c, _ in subs])
    # so it reads again and decides on all three: that verifies
    _finalize(rec, store, r, g, [c for c, _ in subs] + [_candidate(store, rec, r, 2)])
    report = audit_task(chain, rec.registry, store, rec.task_id)
    assert report.ok, [str(v) for v in report.violations]
    assert report.aggregates[-1]["match"] and report.aggregates[-1]["inputs"] == "3 submission(s) in chain order"


def _candidate(store, rec, r, i):
    from chainfl.audit.history import load_history

    (sub,) = [s for s in load_history(rec.registry, rec.task_id).rounds[r - 1].submissions
              if s.node == rec.nodes[i].address]
    state, meta = decode(store, sub.cid)
    return Candidate(sub.node, sub.digest, sub.samples, vector=flatten(state), meta=meta)


def test_honest_history_recomputes_every_aggregate_from_all_updates(tmp_path):
    store = open_store((tmp_path / "store").as_uri())
    with connect("eth-tester://memory") as chain:
        rec = record_federated(chain, store, n_nodes=4, rounds=2, strategy="screened-fedavg", poison=1)
        report = audit_task(chain, rec.registry, store, rec.task_id)
    assert report.ok, [str(v) for v in report.violations]
    assert [(a["match"], a["inputs"]) for a in report.aggregates] == [(True, "4 submission(s) in chain order")] * 2
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
        (v,) = [v for v in report.violations]
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
