"""Federated-mode checks: rounds follow each other and every round's decision is recomputed.

For each round the auditor rebuilds what the coordinator decided on: every update submitted to
the round, in chain order, with its blob (fetched and verified here) — the contract makes the
coordinator decide on exactly these — and calls the same pure function the coordinator calls,
:func:`chainfl.aggregation.decision.decide_round`, with the task's recorded strategy, the global
model of the round (and of the round before, for server momentum) and the committed sample
counts. Then:

* the flagged nodes and their reason codes, the included and the excluded nodes, and whether the
  round was finalized or abandoned must equal the recomputed decision (``flag-inconsistent``,
  ``included-inconsistent``, ``excluded-inconsistent``, ``decision-mismatch``);
* a finalized round's aggregate must recompute byte for byte (the recomputed weights encoded with
  the recorded blob's meta; ``aggregate-mismatch``);
* an included or excluded update whose blob this store cannot show makes the round
  ``aggregate-unverifiable``; a flagged update's blob that the store cannot show is taken as the
  coordinator recorded it (a warning unless its code is ``unavailable``: an update whose blob
  never resolved cannot be recomputed by anyone, which is why it is flagged).

In a task with peer validation the round's decision also needs its **peer evidence** (the signed
score reports the coordinator decided from, named in ``finalizeRound``/``abandonRound``): it
must be there, be about this round and its global model, and hold only valid signed reports of
the task's nodes, one per node (``peer-evidence``); the recomputation then reads exactly those.
Omitting a report cannot be seen here (who sent what to the coordinator is off chain); forging or
altering one can.

Flags are findings against the flagged node; abandoned rounds are listed with their reason.
"""

from __future__ import annotations

import numpy as np

from chainfl.aggregation.decision import Candidate, decide_round, reason_code
from chainfl.audit.blobs import BlobProblem, hx
from chainfl.errors import ChainflError
from chainfl.storage.codec import digest as sha256, encode_model


def replay(a) -> None:
    c = a.h.created
    head, head_cid = c.initial_digest, c.initial_cid
    strategy = _strategy(a)
    previous = 0
    last = None
    opened_on: dict[int, tuple[bytes, str]] = {}      # round -> (global model digest, cid)
    for r in a.h.rounds:
        where = dict(round=r.round, node=c.coordinator)
        if r.round != previous + 1:
            a.violate("round-order", f"round {r.round} opened after round {previous}", **where)
        if r.global_model != head:
            a.violate("round-order", f"round opened on {hx(r.global_model)}, the current global model is "
                      f"{hx(head)}", cid=head_cid, **where)
        if last is not None and not last.ended:
            a.violate("round-order", f"round {last.round} never ended but round {r.round} was opened", **where)
        previous, last = r.round, r
        opened_on[r.round] = (r.global_model, head_cid)
        global_state = _global(a, r.global_model, head_cid) if r.global_model == head else None
        candidates, unseen = _candidates(a, r, global_state)
        _record_round(a, r)
        if not r.ended:
            a.warnings.append(f"round {r.round} is still open")
            continue
        _check_coverage(a, r)
        prev_state = None
        if strategy is not None and strategy.server_momentum and r.round - 1 in opened_on:
            prev_state = _global(a, *opened_on[r.round - 1])
        _recompute(a, r, strategy, global_state, prev_state, candidates, unseen,
                   needs_previous=strategy is not None and bool(strategy.server_momentum) and r.round > 1)
        if r.finalized:
            head, head_cid = r.digest, r.cid
    a.replayed = {"head": head, "accepted": head, "seq": previous, "expected": None,
                  "head_cid": head_cid, "accepted_cid": head_cid,
                  "round_open": bool(a.h.rounds and not a.h.rounds[-1].ended)}


def _strategy(a):
    c = a.h.created
    if a.spec is None:
        return None
    if not a.spec.strategy:
        a.violate("spec-invalid", "federated task spec names no aggregation strategy", node=c.coordinator,
                  cid=c.config_cid)
        return None
    from chainfl.aggregation.boosting import strategy_from_spec

    try:
        return strategy_from_spec(a.spec.strategy)
    except (ChainflError, TypeError, KeyError) as e:
        a.violate("spec-invalid", f"strategy {a.spec.strategy} cannot be rebuilt: {e}", node=c.coordinator,
                  cid=c.config_cid)
        return None


def _gbdt(a) -> bool:
    return a.spec is not None and a.spec.model.get("kind") == "gbdt"


def _candidates(a, r, global_state) -> tuple[list[Candidate], set[str]]:
    """The round's submissions in chain order as decision candidates, and the nodes whose blob
    this store could not show (their candidate carries the coordinator's flag, if any)."""
    from chainfl.agents import modelio
    from chainfl.learning.models import flatten

    layout = None
    if _gbdt(a) and global_state is not None:
        try:
            layout = modelio.update_layout(a.spec, global_state)
        except ChainflError:
            layout = None
    out, unseen, seen = [], set(), set()
    for s in sorted(r.submissions, key=lambda s: (s.at.block, s.at.log_index)):
        w = dict(round=r.round, node=s.node, cid=s.cid)
        summary = a.node(s.node)
        summary.contributions += 1
        summary.samples += s.samples
        if s.node in seen:
            a.violate("duplicate-update", "second update from the same node in one round", **w)
        seen.add(s.node)
        if s.parent != r.global_model:
            a.violate("update-parent", f"update trained on {hx(s.parent)}, not the round's global model "
                      f"{hx(r.global_model)}", **w)
        if not a.participant(s.node):
            a.violate("not-participant", f"{s.node} is not a participant in the task spec", **w)
        flagged = r.flags.get(s.node)
        if _gbdt(a) and layout is None:
            # without the round's global model a gbdt update's layout is unknown: not read (the
            # round is reported unverifiable; the node is not blamed for the auditor's gap)
            out.append(Candidate(s.node, s.digest, s.samples, problem=flagged or "unavailable: the round's global "
                                 "model is not readable, so neither is its update"))
            continue
        try:
            state, meta = a.fetch_model(f"round {r.round} update", s.digest, s.cid, node=s.node, round=r.round,
                                        parent=s.parent, layout=layout)
        except BlobProblem as p:
            if p.unseen:
                unseen.add(s.node)
                if flagged is None:
                    a.violate(p.kind, f"round {r.round} update: {p.message}", **w)
                out.append(Candidate(s.node, s.digest, s.samples, problem=flagged or "unavailable: not in the "
                                     "auditor's store"))
                if flagged is not None and reason_code(flagged) != "unavailable":
                    a.warnings.append(f"round {r.round}: {s.node}'s update was flagged ({flagged}) but this store "
                                      f"cannot show its blob ({p.message}); taken as recorded")
            else:
                out.append(Candidate(s.node, s.digest, s.samples, problem=f"invalid: {p.kind}: {p.message}"))
            continue
        if flagged is not None and reason_code(flagged) == "unavailable":
            a.warnings.append(f"round {r.round}: {s.node}'s update was flagged as unavailable but this store has "
                              f"its blob now (published late?)")
            out.append(Candidate(s.node, s.digest, s.samples, problem=flagged))
            continue
        # (a gbdt update blob was decoded against its round's layout: exactly {"update": vector})
        vector = np.asarray(state["update"], dtype=np.float32) if _gbdt(a) else flatten(a.ordered(state))
        out.append(Candidate(s.node, s.digest, s.samples, vector=vector, meta=meta))
    return out, unseen


def _record_round(a, r) -> None:
    c = a.h.created
    for node, reason in r.flags.items():
        a.flags.append({"kind": "flag", "round": r.round, "seq": None, "node": node, "by": c.coordinator,
                        "reason": reason})
        a.node(node).flags += 1
        a.find(f"flagged:{reason_code(reason) or 'unspecified'}", node, reason, round=r.round)
    for node in r.included:
        a.node(node).included += 1
    for node in r.excluded:
        a.node(node).excluded += 1
    if r.abandoned:
        a.find("abandoned", None, f"round {r.round} ended without an aggregate: {r.abandon_reason}", round=r.round)
    losses = [s.loss for s in r.submissions]
    a.rounds.append({"round": r.round, "updates": len(r.submissions), "flagged": len(r.flags),
                     "included": len(r.included), "excluded": len(r.excluded), "finalized": r.finalized,
                     "abandoned": r.abandoned, "abandon_reason": r.abandon_reason,
                     "mean_loss": float(np.mean(losses)) if losses else None,
                     "samples": int(sum(s.samples for s in r.submissions))})


def _check_coverage(a, r) -> None:
    """Every submitter has exactly one verdict (the contract enforces it; checked anyway)."""
    fw = dict(round=r.round, node=a.h.created.coordinator, cid=r.cid)
    submitted = {s.node for s in r.submissions}
    verdicts = list(r.included) + list(r.excluded) + list(r.flags)
    if sorted(verdicts) != sorted(submitted):
        a.violate("decision-incomplete", f"the verdicts name {sorted(set(verdicts) ^ submitted)} wrongly: every "
                  f"submitted update needs exactly one verdict", **fw)


def _global(a, digest: bytes, cid: str):
    try:
        return a.cache.model(digest, cid, a.expected)[0]
    except BlobProblem:
        return None      # its failure was reported where it was recorded


def _recompute(a, r, strategy, global_state, prev_state, candidates, unseen, needs_previous: bool) -> None:
    from chainfl.learning.models import flatten, unflatten

    c = a.h.created
    fw = dict(round=r.round, node=c.coordinator, cid=r.cid)
    record = {"round": r.round, "digest": hx(r.digest), "cid": r.cid, "match": False,
              "strategy": None if strategy is None else strategy.name, "inputs": None, "recomputed": None,
              "abandoned": r.abandoned}
    a.aggregates.append(record)
    aggregate = None
    if r.finalized:
        try:
            aggregate = a.fetch_model(f"round {r.round} aggregate", r.digest, r.cid, node=c.coordinator,
                                      round=r.round, parent=r.parent)
        except BlobProblem as p:
            a.violate(p.kind, f"round {r.round} aggregate: {p.message}", **fw)
        if r.parent != r.global_model:
            a.violate("aggregate-parent", f"finalized on {hx(r.parent)}, the round was opened on "
                      f"{hx(r.global_model)}", **fw)
    blind = sorted(unseen - set(r.flags))
    why = ("no strategy" if strategy is None else "the global model is unavailable" if global_state is None
           else "the previous global model is unavailable" if needs_previous and prev_state is None
           else f"the update blob(s) of {', '.join(blind)} are not in this store" if blind
           else "the aggregate blob is unavailable" if r.finalized and aggregate is None else None)
    if why:
        record["inputs"] = f"not recomputed: {why}"
        a.violate("aggregate-unverifiable", f"round {r.round} cannot be recomputed: {why}", **fw)
        return
    peer = None
    from chainfl.agents.peerreports import peer_settings

    if peer_settings(a.spec) is not None:
        peer = _peer_evidence(a, r)
        if peer is None:
            record["inputs"] = "not recomputed: the round's peer evidence is missing or invalid"
            return
    reference = a.ordered(global_state)
    prev_vec = None if prev_state is None else flatten(a.ordered(prev_state))
    boosting = None
    if _gbdt(a):
        from chainfl.agents import modelio

        boosting = (modelio.boosting(a.spec), dict(global_state))
    outcome = decide_round(candidates, strategy, task_id=a.h.task_id, round_=r.round,
                           reference=None if boosting else flatten(reference), previous=prev_vec,
                           committed=a.spec.node_samples if a.spec else None, boosting=boosting, peer=peer)
    record["inputs"] = f"{len(candidates)} submission(s) in chain order"
    if peer is not None:
        record["peer_reports"] = len(peer[1])
        record["peer_excluded"] = sorted(n for n, sc in outcome.scores.items()
                                         if str(sc.get("peer", {}).get("reason", "")).startswith("excluded"))
    record.update(strategy_included=list(outcome.included), strategy_excluded=list(outcome.excluded),
                  strategy_flagged={n: reason_code(v) for n, v in outcome.flagged.items()})
    ok = True
    for node in sorted(set(outcome.flagged) | set(r.flags)):
        got, want = r.flags.get(node), outcome.flagged.get(node)
        cid = next((s.cid for s in r.submissions if s.node == node), None)
        if got is None or want is None or reason_code(got) != reason_code(want):
            ok = False
            a.violate("flag-inconsistent", f"round {r.round}: node {node} is "
                      + (f"flagged on chain ({got!r})" if got is not None else "not flagged on chain")
                      + ", but the recorded strategy "
                      + (f"flags it ({want!r})" if want is not None else "does not flag it"), round=r.round,
                      node=node, cid=cid)
    for label, got, want in (("included", r.included, outcome.included), ("excluded", r.excluded, outcome.excluded)):
        if sorted(got) != sorted(want):
            ok = False
            a.violate(f"{label}-inconsistent", f"round {r.round}: {label} on chain {sorted(got)}, the recorded "
                      f"strategy's {sorted(want)}", **fw)
    if outcome.abandoned != r.abandoned:
        ok = False
        a.violate("decision-mismatch", f"round {r.round} was {'abandoned' if r.abandoned else 'finalized'} but "
                  f"the recorded strategy " + (f"abandons it ({outcome.abandon_reason})" if outcome.abandoned
                                               else "makes an aggregate"), **fw)
        return
    if r.abandoned:
        record.update(match=ok, recomputed=None)
        return
    _, meta = aggregate
    new_state = a.ordered(outcome.state) if boosting else unflatten(outcome.vector, reference)
    got = sha256(encode_model(new_state, meta))
    record["recomputed"] = hx(got)
    if got != r.digest:
        a.violate("aggregate-mismatch", f"the aggregate does not recompute from the round's updates with strategy "
                  f"{strategy.name!r} (recorded {hx(r.digest)}, recomputed {hx(got)})", **fw)
        return
    record["match"] = ok


def _peer_evidence(a, r):
    """``(PeerConfig, rows)`` for :func:`decide_round` from the round's peer evidence, or None
    after a ``peer-evidence`` violation."""
    from chainfl.agents.peerreports import (evidence_cap, parse_evidence, peer_inputs, peer_settings,
                                            verified_peer_reports)
    from chainfl.errors import AgentError

    fw = dict(round=r.round, node=a.h.created.coordinator, cid=r.evidence_cid)
    if r.evidence_digest is None:
        a.violate("peer-evidence", f"round {r.round} was decided without peer evidence, but the task validates "
                  f"updates by peer reports", **fw)
        return None
    try:
        blob = a.cache.blob(r.evidence_digest, r.evidence_cid or "", max_bytes=evidence_cap(a.spec))
        task_id, round_, base, reports = parse_evidence(blob)
    except BlobProblem as p:
        a.violate("peer-evidence", f"round {r.round} peer evidence: {p.message}", **fw)
        return None
    except AgentError as e:
        a.violate("peer-evidence", f"round {r.round} peer evidence: {e}", **fw)
        return None
    if task_id != a.h.task_id or round_ != r.round or base.lower() != (hx(r.global_model) or "").lower():
        a.violate("peer-evidence", f"round {r.round}'s peer evidence is about task {task_id} round {round_} model "
                  f"{base}, not task {a.h.task_id} round {r.round} model {hx(r.global_model)}", **fw)
        return None
    valid = verified_peer_reports(reports, a.spec, task_id, round_, base)
    if len(valid) != len(reports):
        bad = sorted({x.node for x in reports} - {x.node for x in valid}) or ["(a second report of one node)"]
        a.violate("peer-evidence", f"round {r.round}'s peer evidence holds reports that are not valid signed "
                  f"reports of task nodes, one per node: {', '.join(bad)}", **fw)
        return None
    return peer_settings(a.spec)[0], peer_inputs(valid)
