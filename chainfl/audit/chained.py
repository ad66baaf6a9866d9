"""Chained-mode checks: replay the handoffs, rejections and skips against the contract's rules.

* each handoff comes from the node whose turn it was, its parent is the head at that moment,
  sequence numbers follow each other, the next node is a task node other than the sender;
* a rejection names the unaccepted head and its producer and returns the head to the last
  accepted model; a skip comes from the coordinator and never hands the turn to the producer of
  an unaccepted head (so nobody accepts its own model);
* every handoff blob is fetched: an **accepted** handoff (a later handoff built on it, or it is
  the last accepted model) must verify, name its producer, this task and its step in its meta,
  and claim no more rows than its producer committed — else it is a violation (some node
  accepted what it must not have); a **rejected** handoff's problems are the producer's
  misbehaviour, handled by the rejection (a finding); the pending final head is judged by the
  release check;
* **newton tasks** (:mod:`chainfl.learning.newton`): a receiver's check is deterministic from
  public data (the two states, the claimed rows, the pass), so the audit redoes it: an accepted
  handoff that fails it is a violation (``handoff-newton``), and a rejection of a handoff that
  passes every check (blob, meta, rows, Newton rule) is held against the *rejecter*
  (``rejected-unjustified``), not the producer — only ``unavailable`` is taken as recorded.
"""

from __future__ import annotations

import numpy as np

from chainfl.aggregation.decision import reason_code
from chainfl.audit.blobs import BlobProblem, hx
from chainfl.audit.history import Handoff, Rejection, Skip
from chainfl.errors import ChainflError


def _is_newton(a) -> bool:
    return a.spec is not None and a.spec.model.get("kind") == "newton"


def replay(a) -> None:
    c = a.h.created
    head = accepted = c.initial_digest
    head_node = None
    expected = c.first_node
    seq = 0
    cids = {c.initial_digest: c.initial_cid}
    losses: dict[int, list[float]] = {}
    fate: dict[bytes, str] = {}                 # handoff digest -> "accepted" | "rejected"
    by_digest = {h.digest: h for h in a.h.handoffs}
    for step in a.h.steps:
        if isinstance(step, Handoff):
            rnd = (step.seq - 1) // a.n_nodes + 1
            where = dict(round=rnd, seq=step.seq, node=step.node, cid=step.cid)
            s = a.node(step.node)
            s.contributions += 1
            s.samples += step.samples
            losses.setdefault(rnd, []).append(step.loss)
            if step.node != expected:
                a.violate("handoff-turn", f"handoff recorded by {step.node} but it was {expected}'s turn", **where)
            if step.parent != head:
                a.violate("handoff-order", f"parent {hx(step.parent)} is not the head {hx(head)} at that moment "
                          f"(handoff out of order)", **where)
            if head != accepted and head_node == step.node and len(c.nodes) > 1:
                a.violate("own-accept", f"{step.node} accepted its own handoff {hx(step.parent)}", **where)
            if step.seq != seq + 1:
                a.violate("handoff-seq", f"sequence number {step.seq} follows {seq}", **where)
            if step.digest == step.parent:
                a.violate("handoff-unchanged", "the new model equals its parent", **where)
            if not a.participant(step.node):
                a.violate("not-participant", f"{step.node} is not a participant in the task spec", **where)
            if not a.participant(step.next):
                a.violate("not-participant", f"next node {step.next} is not a participant in the task spec", **where)
            elif a.spec is not None and a.participant(step.node) \
                    and step.next.lower() != a.spec.next_node(step.node).lower():
                a.warnings.append(f"seq {step.seq}: {step.node} handed over to {step.next}, not to "
                                  f"{a.spec.next_node(step.node)} as the spec's order says")
            if step.parent != c.initial_digest:
                fate[step.parent] = "accepted"
            cids[step.digest] = step.cid
            accepted, head, head_node, expected, seq = step.parent, step.digest, step.node, step.next, step.seq
        elif isinstance(step, Rejection):
            where = dict(round=(seq - 1) // a.n_nodes + 1 if seq else None, seq=seq or None, node=step.node,
                         cid=cids.get(step.digest))
            a.flags.append({"kind": "rejection", "round": where["round"], "seq": where["seq"],
                            "node": step.producer, "by": step.node, "reason": step.reason})
            a.node(step.node).rejections_issued += 1
            a.node(step.producer).rejections_received += 1
            unjustified = None
            if _is_newton(a) and reason_code(step.reason) != "unavailable" and step.digest in by_digest:
                unjustified = _passes_every_check(a, by_digest[step.digest], cids)
            if unjustified:
                a.find("rejected-unjustified", step.node, f"rejected handoff {seq} of {step.producer} "
                       f"({step.reason}), which passes every check: {unjustified}", round=where["round"],
                       seq=seq or None, cid=where["cid"])
            else:
                a.find(f"rejected:{reason_code(step.reason) or 'gate'}", step.producer,
                       f"handoff {seq} rejected by {step.node}: {step.reason}", round=where["round"], seq=seq or None,
                       cid=where["cid"])
            if step.node != expected:
                a.violate("rejection-turn", f"rejection by {step.node} but it was {expected}'s turn", **where)
            if step.digest != head or head == accepted:
                a.violate("rejection-inconsistent", f"rejected {hx(step.digest)} but the unaccepted head was "
                          f"{hx(head) if head != accepted else 'none'}", **where)
            if step.producer != head_node:
                a.violate("rejection-inconsistent", f"rejection names producer {step.producer}, the head was "
                          f"produced by {head_node}", **where)
            if step.restored != accepted:
                a.violate("rejection-inconsistent", f"head returned to {hx(step.restored)}, not to the last "
                          f"accepted model {hx(accepted)}", **where)
            fate[step.digest] = "rejected"
            a.lineage.append({"label": f"rejection of seq {seq}", "digest": hx(step.digest),
                              "cid": cids.get(step.digest), "node": step.node, "parent": None,
                              "round": where["round"], "seq": seq or None, "status": "rejected",
                              "reason": step.reason, "restored": hx(step.restored)})
            head, head_node = step.restored, None
        elif isinstance(step, Skip):
            a.node(step.skipped).skipped += 1
            a.find("skipped", step.skipped, f"silent on its turn; the coordinator passed it to {step.next}",
                   seq=seq or None)
            if step.skipped != expected:
                a.violate("skip-inconsistent", f"skip names {step.skipped} but it was {expected}'s turn",
                          node=step.skipped, seq=seq or None)
            if step.by != c.coordinator:
                a.violate("skip-inconsistent", f"turn skipped by {step.by}, not the task's coordinator "
                          f"{c.coordinator}", node=step.by, seq=seq or None)
            if head != accepted and step.next == head_node:
                a.violate("own-accept", f"turn skipped to {step.next}, the producer of the unaccepted head",
                          node=step.by, seq=seq or None)
            expected = step.next
    if accepted != c.initial_digest:
        fate.setdefault(accepted, "accepted")
    _check_blobs(a, fate, cids)
    for rnd, values in sorted(losses.items()):
        a.rounds.append({"round": rnd, "handoffs": len(values), "mean_loss": float(np.mean(values)),
                         "min_loss": float(np.min(values)), "max_loss": float(np.max(values))})
    a.replayed = {"head": head, "accepted": accepted, "seq": seq, "expected": expected, "head_node": head_node,
                  "head_cid": cids.get(head), "accepted_cid": cids.get(accepted)}


def _check_blobs(a, fate: dict[bytes, str], cids: dict[bytes, str]) -> None:
    for h in a.h.handoffs:
        rnd = (h.seq - 1) // a.n_nodes + 1
        where = dict(round=rnd, seq=h.seq, node=h.node, cid=h.cid)
        status = fate.get(h.digest, "pending")
        try:
            _, meta = a.fetch_model(f"handoff seq {h.seq}", h.digest, h.cid, node=h.node, round=rnd, seq=h.seq,
                                    parent=h.parent)
            problem = _handoff_problem(a, h, meta)
            kind = "handoff-claim"
            if problem is None and status == "accepted" and _is_newton(a):
                problem, kind = _newton_problem(a, h, cids), "handoff-newton"
        except BlobProblem as p:
            problem, kind = p.message, p.kind
        if problem is None:
            continue
        if status == "accepted":
            a.violate(kind, f"accepted handoff seq {h.seq}: {problem}", **where)
        elif status == "rejected":
            a.lineage[-1]["status"] = "rejected"
        else:
            a.warnings.append(f"the final unaccepted handoff seq {h.seq} of {h.node}: {problem}")


def _handoff_problem(a, h: Handoff, meta: dict) -> str | None:
    maker = str(meta.get("node", ""))
    if meta.get("kind") != "handoff" or maker.lower() != h.node.lower() \
            or meta.get("task") != a.h.task_id or meta.get("step") != h.seq - 1:
        return (f"its blob is a {meta.get('kind')!r} made by {maker or '?'} for task {meta.get('task')!r} "
                f"step {meta.get('step')!r}, not {h.node}'s handoff {h.seq} (a copy)")
    cap = a.spec.committed_samples(h.node) if a.spec is not None else None
    if cap is not None and h.samples > cap:
        return f"it claims {h.samples} training rows, but {h.node} committed {cap}"
    return None


def _newton_problem(a, h: Handoff, cids: dict[bytes, str]) -> str | None:
    """Why handoff ``h`` breaks the newton rule against its parent (None: it does not)."""
    from chainfl.agents.modelio import fitting
    from chainfl.learning import newton

    try:                                  # (the lineage records these blobs where they are checked)
        child, _ = a.cache.model(h.digest, h.cid, a.expected)
        parent, _ = a.cache.model(h.parent, cids.get(h.parent, ""), a.expected)
    except BlobProblem as p:
        return f"{p.kind}: {p.message}"
    if a.participant(h.node) and h.next.lower() != a.spec.next_node(h.node).lower():
        return f"order: handed over to {h.next}, the task's order names {a.spec.next_node(h.node)}"
    pass_index = newton.pass_of(h.seq, len(a.spec.nodes))
    try:
        reference = _rows_reference(a, h.node, cids) if pass_index > 0 else None
        return newton.check_handoff(fitting(a.spec), parent, child, h.samples, pass_index, reference)
    except ChainflError as e:                 # a state of the wrong shape, a spec that does not parse
        return f"cannot be checked: {e}"


def _rows_reference(a, node: str, cids: dict[bytes, str]):
    """``node``'s :class:`~chainfl.learning.newton.RowsReference` from its first pass-0 handoff that
    passes the pass-0 check (accepted or not), as the receivers rebuild it; None if it has none."""
    from chainfl.agents.modelio import fitting
    from chainfl.learning import newton

    cache = a.newton_references
    key = node.lower()
    if key not in cache:
        def load(digest):
            try:
                return a.cache.model(digest, cids.get(digest, ""), a.expected)[0]
            except BlobProblem:
                return None

        mine = [(h.parent, h.digest, h.samples) for h in a.h.handoffs
                if h.node.lower() == key and newton.pass_of(h.seq, len(a.spec.nodes)) == 0]
        cache[key] = newton.first_reference(fitting(a.spec), mine, load)
    return cache[key]


def _passes_every_check(a, h: Handoff, cids: dict[bytes, str]) -> str | None:
    """A description when handoff ``h`` passes every check a receiver makes (blob, meta, claimed
    rows, the newton rule), None when one fails (the rejection was justified)."""
    try:
        _, meta = a.cache.model(h.digest, h.cid, a.expected)
    except BlobProblem:
        return None
    if _handoff_problem(a, h, meta) is not None or _newton_problem(a, h, cids) is not None:
        return None
    return "its blob verifies, its meta and claimed rows are its producer's, and its sums obey the Newton rule"
