"""The end of a task: final state, the plan, the release and the evidence behind its threshold.

* **final state** — the replayed head/accepted/seq/turn equal the contract's current task view
  (catches state changed without an event, e.g. a dev chain's storage overwritten);
* **plan** — fewer handoffs or rounds than planned is a warning naming the recorded reason;
* **release** — the released weights equal the final model (federated: the last aggregate;
  chained: the last accepted model, or the final head if the node whose turn it was checked it);
  its meta's scaler, feature names and model config equal the task spec's (detection uses them);
  its threshold follows from the evidence recorded at closeTask: the nodes' signed validation
  histograms of the released model (signatures verified, task nodes only), merged and maximised
  exactly as the coordinator does (:mod:`chainfl.agents.threshold`).
"""

from __future__ import annotations

import numpy as np

from chainfl.audit.blobs import BlobProblem, hx
from chainfl.chain.registry import Mode


def check_final(a, live) -> None:
    """Compare the replay with the contract's current task view (``live``: TaskState or None)."""
    if live is None:
        return
    rep = a.replayed
    c = a.h.created
    diffs = []
    if live.head != rep["head"]:
        diffs.append(f"head {hx(live.head)} (replayed {hx(rep['head'])})")
    if live.accepted != rep["accepted"]:
        diffs.append(f"accepted {hx(live.accepted)} (replayed {hx(rep['accepted'])})")
    if live.seq != rep["seq"]:
        diffs.append(f"seq {live.seq} (replayed {rep['seq']})")
    if a.h.mode == Mode.CHAINED and live.expected != rep["expected"]:
        diffs.append(f"turn of {live.expected} (replayed {rep['expected']})")
    if live.closed != (a.h.closed is not None):
        diffs.append(f"closed={live.closed} (events say {a.h.closed is not None})")
    if live.node_count and live.node_count != len(c.nodes):
        diffs.append(f"{live.node_count} task nodes (TaskCreated lists {len(c.nodes)})")
    if diffs:
        a.violate("state-mismatch", "the contract's task state differs from its event history: " + "; ".join(diffs)
                  + " — state changed without an event (tampered dev chain?)",
                  seq=live.seq if a.h.mode == Mode.CHAINED else None,
                  round=live.seq if a.h.mode == Mode.FEDERATED else None, node=c.coordinator,
                  cid=rep.get("head_cid"))


def check_planned(a) -> None:
    if a.spec is None or a.h.closed is None:
        return
    why = f" (recorded reason: {a.h.closed.reason})" if a.h.closed.reason else ""
    if a.h.mode == Mode.CHAINED and len(a.h.handoffs) < a.spec.total_handoffs:
        a.warnings.append(f"task closed after {len(a.h.handoffs)} handoffs; the spec plans {a.spec.total_handoffs} "
                          f"({a.spec.rounds} passes over {len(a.spec.nodes)} nodes){why}")
    from chainfl.agents.stopping import STOP_PREFIX

    done = sum(1 for r in a.h.rounds if r.finalized)
    stopped = (a.h.closed.reason or "").startswith(STOP_PREFIX)     # checked by check_stopping
    if a.h.mode == Mode.FEDERATED and done < a.spec.rounds and not stopped:
        a.warnings.append(f"task closed after {done} finalized rounds; the spec plans {a.spec.rounds}{why}")


def check_release(a) -> dict | None:
    closed = a.h.closed
    a.final = {"digest": hx(a.replayed["head"]), "cid": a.replayed["head_cid"]}
    if closed is None or closed.release_digest is None:
        return None
    cid = closed.release_cid or ""
    info = {"digest": hx(closed.release_digest), "cid": cid, "status": "ok", "matches_final": False, "meta": None,
            "evidence_cid": closed.evidence_cid, "threshold_recomputed": None}
    try:
        state, meta = a.fetch_model("release", closed.release_digest, cid, node=closed.by,
                                    parent=a.replayed["head"])
    except BlobProblem as p:
        a.violate(p.kind, f"release: {p.message}", node=closed.by, cid=cid)
        info["status"] = p.kind
        return info
    info["meta"] = {k: v for k, v in meta.items() if k != "scaler"}
    if a.spec is not None:
        from chainfl.audit.detect import same_json

        spec_values = {"scaler": a.spec.scaler, "feature_names": list(a.spec.feature_names), "model": a.spec.model}
        for key, want in spec_values.items():
            if not same_json(meta.get(key), want):
                info["status"] = "release-meta"
                a.violate("release-meta", f"the release {cid}'s {key} differs from the task spec's (detection would "
                          f"use it)", node=closed.by, cid=cid)
    source, unseen = _matching(a, state)
    info["matches_final"] = source
    if not source:
        if unseen:
            label, head_cid, p = unseen[0]
            info["status"] = p.kind
            a.violate(p.kind, f"the release cannot be compared with the {label} model {head_cid}: {p.message}",
                      node=closed.by, cid=head_cid)
            return info
        info["status"] = "release-mismatch"
        a.violate("release-mismatch", "the release's weights equal neither the final head nor the last accepted "
                  "model", node=closed.by, cid=cid)
        return info
    released = a.replayed[source]
    reports = _evidence(a, info, released)
    if a.h.mode == Mode.CHAINED and source == "head" and a.replayed["head"] != a.replayed["accepted"]:
        checker = a.replayed["expected"]
        if checker.lower() not in {r.node.lower() for r in reports or []}:
            a.violate("release-unchecked", f"the release is the final handoff of {a.replayed.get('head_node')}, which "
                      f"no node accepted: the evidence holds no report of {checker}, whose check it awaited",
                      node=closed.by, cid=cid)
    _check_threshold(a, info, meta, released, reports)
    return info


def _matching(a, state) -> tuple[str | bool, list]:
    """Which of the final head / last accepted model the release equals (``False``: neither), and
    the ``(label, cid, BlobProblem)`` of those that could not be read to compare."""
    unseen = []
    for label in ("head", "accepted"):
        d, cid = a.replayed[label], a.replayed[f"{label}_cid"]
        if cid is None:
            continue
        try:
            final_state, _ = a.cache.model(d, cid, a.expected)
        except BlobProblem as p:
            unseen.append(("final head" if label == "head" else "last accepted", cid, p))
            continue
        if set(final_state) == set(state) and all(
                np.array_equal(final_state[k], state[k]) and final_state[k].dtype == state[k].dtype
                for k in final_state):
            return label, unseen
    return False, unseen


def _evidence(a, info: dict, released: bytes):
    """The verified reports of the evidence blob (None when there is no evidence or it is broken)."""
    from chainfl.agents.reports import parse_evidence, verified_reports
    from chainfl.errors import AgentError

    closed = a.h.closed
    if closed.evidence_digest is None:
        return None
    from chainfl.agents.reports import evidence_cap

    try:
        blob = a.cache.blob(closed.evidence_digest, closed.evidence_cid or "", max_bytes=evidence_cap(a.spec))
        task_id, model, reports = parse_evidence(blob)
    except BlobProblem as p:
        a.violate(p.kind, f"release evidence: {p.message}", node=closed.by, cid=closed.evidence_cid)
        return None
    except AgentError as e:
        a.violate("evidence-invalid", f"release evidence: {e}", node=closed.by, cid=closed.evidence_cid)
        return None
    if task_id != a.h.task_id or model != hx(released):
        a.violate("evidence-invalid", f"the evidence is about task {task_id} model {model}, not task {a.h.task_id} "
                  f"model {hx(released)}", node=closed.by, cid=closed.evidence_cid)
        return None
    from chainfl.agents.reports import strict_reports, within_commitment

    strict = strict_reports(a.spec)          # a spec recorded before these rules keeps the old check
    good = []
    for r in reports:
        if r.task_id != a.h.task_id or not a.participant(r.node) or model not in r.histograms or \
                not (verified_reports([r], a.h.task_id, [r.node], model) == [r] if strict else r.verify()):
            a.violate("evidence-invalid", f"the evidence holds a report of {r.node} that is not a valid signed "
                      f"report of a task node on the released model", node=closed.by, cid=closed.evidence_cid)
            return None
        if not within_commitment(r, model, a.spec):
            a.violate("evidence-invalid", f"the evidence holds a report of {r.node} counting more rows than the "
                      f"training rows it committed; the threshold must leave it out", node=closed.by,
                      cid=closed.evidence_cid)
            return None
        good.append(r)
    if len({r.node.lower() for r in good}) != len(good):
        a.violate("evidence-invalid", "the evidence holds two reports of one node", node=closed.by,
                  cid=closed.evidence_cid)
        return None
    info["evidence_reports"] = len(good)
    return good


def _check_threshold(a, info: dict, meta: dict, released: bytes, reports) -> None:
    from chainfl.agents.threshold import merge_histograms, threshold_from_histogram

    closed = a.h.closed
    recorded = meta.get("threshold")
    if reports is None and closed.evidence_digest is not None:
        return                                   # the broken evidence is reported already
    if not reports:
        if recorded != 0.5 or meta.get("reported_nodes", 0):
            a.violate("release-threshold", f"the release threshold {recorded} claims {meta.get('reported_nodes')} "
                      f"node report(s) but no evidence is recorded", node=closed.by, cid=closed.release_cid)
        else:
            a.warnings.append("the release threshold is the default 0.5: no node reported validation histograms")
        return
    hexd = hx(released)
    threshold, _ = threshold_from_histogram(merge_histograms([r.histograms[hexd] for r in reports]))
    info["threshold_recomputed"] = threshold
    if recorded != threshold or meta.get("reported_nodes") != len(reports):
        a.violate("release-threshold", f"the release threshold {recorded} (from {meta.get('reported_nodes')} "
                  f"report(s)) does not follow from the {len(reports)} signed report(s) of the evidence, which give "
                  f"{threshold}", node=closed.by, cid=closed.release_cid)


def check_stopping(a, info: dict | None) -> None:
    """An early stop follows from its evidence: every report a valid signed report of a task
    node, the models the task's consecutive aggregates, the rule the spec's, and the rule
    re-applied says stop (:func:`chainfl.agents.stopping.check_evidence`)."""
    from chainfl.agents.reports import evidence_cap, parse_stopping
    from chainfl.agents.stopping import STOP_PREFIX, StoppingRule, check_evidence
    from chainfl.errors import AgentError

    closed = a.h.closed
    if closed is None or a.spec is None or a.h.mode != Mode.FEDERATED:
        return
    claims = (closed.reason or "").startswith(STOP_PREFIX)
    parsed = None
    if closed.evidence_digest is not None:
        try:
            parsed = parse_stopping(a.cache.blob(closed.evidence_digest, closed.evidence_cid or "",
                                                 max_bytes=evidence_cap(a.spec)))
        except BlobProblem:
            return                                   # reported with the release evidence
        except AgentError as e:
            a.violate("evidence-invalid", f"stopping evidence: {e}", node=closed.by, cid=closed.evidence_cid)
            return
    if parsed is None:
        if claims:
            a.violate("stop-unjustified", "the task closed as stopped early but its evidence holds no stopping "
                      "reports", node=closed.by, cid=closed.evidence_cid)
        return
    section, reports = parsed
    if not a.spec.stopping:
        a.violate("stop-unjustified", "the evidence records an early stop but the task spec has no stopping rule",
                  node=closed.by, cid=closed.evidence_cid)
        return
    rule = StoppingRule.from_dict(a.spec.stopping)
    if section.get("rule") != rule.to_dict():
        a.violate("stop-unjustified", f"the stopping evidence applies the rule {section.get('rule')}, not the "
                  f"spec's {rule.to_dict()}", node=closed.by, cid=closed.evidence_cid)
        return
    if any(r.task_id != a.h.task_id or not a.participant(r.node) or not r.verify() for r in reports):
        a.violate("evidence-invalid", "the stopping evidence holds a report that is not a valid signed report of "
                  "a task node", node=closed.by, cid=closed.evidence_cid)
        return
    finalized = {r.round: hx(r.digest) for r in a.h.rounds if r.finalized}
    decision, problem = check_evidence(section, reports, rule=rule, task_id=a.h.task_id, nodes=a.spec.nodes,
                                       finalized_models=finalized)
    if problem:
        a.violate("stop-unjustified", problem, node=closed.by, cid=closed.evidence_cid)
        return
    if info is not None:
        info["stopping"] = decision.to_dict()
