"""Verify a task's :class:`~chainfl.audit.history.History` against the store and the rules.

What is checked (each failure is a :class:`Violation` naming the round/seq, the node and the CID):

* **blobs** — the task spec, the initial model, every handoff, update, aggregate and the release
  are fetched by CID and used only if ``sha256(bytes)`` equals the digest on chain (missing,
  modified, or undecodable blobs are violations); every model must have the initial model's
  tensor names, shapes and dtypes;
* **chained handoffs** — replayed against the contract's rules: each handoff comes from the node
  whose turn it was, its parent is the head at that moment, sequence numbers follow each other;
  a rejection names the unaccepted head and its producer and returns the head to the last
  accepted model; a skip names the node whose turn it was and comes from the coordinator;
* **federated rounds** — rounds follow each other on the previous aggregate, every update's parent
  is the round's global model, flags and included nodes refer to submitted updates, and **every
  aggregate is recomputed** with the task's recorded strategy (server momentum from the previous
  round's global model) the way an honest coordinator makes it: from *all* verifiable updates of a
  prefix, in (block, log index) order, of the round's submissions, compared byte for byte (the
  recomputed weights are encoded with the recorded blob's meta), with the on-chain included and
  flagged nodes equal to the strategy's (plus unreadable updates, flagged) and no later submission
  included or flagged — an update left out without a flag, or flagged without the strategy
  flagging it, is a violation naming the node and its CID;
* **final state** — the replayed head/accepted/seq/turn equal the contract's current task view
  (catches state changed without an event, e.g. a dev chain's storage overwritten);
* **release** — the published release's weights equal the final model's, and its meta's scaler,
  feature names and model config equal the task spec's (detection uses them).

:func:`verify_history` is the pure-ish core (store reads only); :func:`chainfl.audit.audit_task`
adds the chain reads.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field

import numpy as np

from chainfl.audit.history import Handoff, History, Rejection, Round, Skip
from chainfl.chain.registry import Mode
from chainfl.errors import BlobNotFoundError, ChainflError, CodecError, IntegrityError, StoreError
from chainfl.storage.codec import check_state, decode_model, digest as sha256, encode_model, expected_of

log = logging.getLogger(__name__)

__all__ = ["Violation", "NodeSummary", "AuditReport", "verify_history", "BlobCache"]


def hx(value: bytes | None) -> str | None:
    return None if value is None else "0x" + bytes(value).hex()


@dataclass(frozen=True)
class Violation:
    """One thing that broke. ``kind`` is a short stable label; ``message`` says what and why."""

    kind: str
    message: str
    round: int | None = None       # federated round, or chained pass over the nodes
    seq: int | None = None         # chained handoff sequence number
    node: str | None = None
    cid: str | None = None

    def where(self) -> str:
        parts = []
        if self.seq is not None:
            parts.append(f"seq {self.seq}")
        if self.round is not None:
            parts.append(f"round {self.round}")
        parts.append(f"node {self.node or '-'}")
        parts.append(f"CID {self.cid or '-'}")
        return ", ".join(parts)

    def __str__(self) -> str:
        return f"[{self.kind}] {self.where()}: {self.message}"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class NodeSummary:
    """What one account did in the task."""

    address: str
    contributions: int = 0          # handoffs (chained) or updates (federated)
    samples: int = 0                # training rows claimed over all contributions
    included: int = 0               # federated: updates that entered an aggregate
    flags: int = 0                  # federated: updates flagged by the coordinator
    rejections_issued: int = 0      # chained: incoming models this node rejected
    rejections_received: int = 0    # chained: this node's models rejected by the next node
    skipped: int = 0                # chained: turns passed over by the coordinator
    violations: int = 0             # violations naming this node
    mean_loss: float | None = None  # mean recorded training loss

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class AuditReport:
    """The result of auditing one task. ``ok`` is True when there is no violation."""

    task_id: int
    registry: str
    chain: str
    store: str
    mode: str
    spec: dict | None
    violations: list[Violation] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    nodes: dict[str, NodeSummary] = field(default_factory=dict)
    lineage: list[dict] = field(default_factory=list)     # every model: label, digest, cid, parent, node, status
    rounds: list[dict] = field(default_factory=list)      # per-round metrics
    aggregates: list[dict] = field(default_factory=list)  # federated recomputations
    flags: list[dict] = field(default_factory=list)       # flags and rejections: round/seq, node, reason
    release: dict | None = None
    final: dict | None = None                             # final model digest/cid
    counts: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_dict(self) -> dict:
        return {"task_id": self.task_id, "registry": self.registry, "chain": self.chain,
                "store": self.store, "mode": self.mode, "ok": self.ok, "spec": self.spec,
                "violations": [v.to_dict() | {"text": str(v)} for v in self.violations],
                "warnings": list(self.warnings),
                "nodes": {a: n.to_dict() for a, n in self.nodes.items()},
                "lineage": list(self.lineage), "rounds": list(self.rounds),
                "aggregates": list(self.aggregates), "flags": list(self.flags), "release": self.release, "final": self.final,
                "counts": dict(self.counts), "seconds": round(self.seconds, 3)}


# --- blobs ------------------------------------------------------------------------------------
class BlobCache:
    """Fetches blobs by CID, checks them against the on-chain digest, decodes models once."""

    def __init__(self, store, timeout: float):
        self.store = store
        self.timeout = timeout
        self.raw: dict[tuple[bytes, str], bytes] = {}
        self.failures: dict[tuple[bytes, str], tuple[str, str]] = {}
        self.models: dict[tuple[bytes, str], tuple[OrderedDict, dict]] = {}
        self.fetched = 0
        self.bytes = 0

    def blob(self, digest: bytes, cid: str) -> bytes:
        """Verified bytes; raises ``_BlobProblem(kind, message)`` on any failure (cached)."""
        key = (bytes(digest), cid)
        if key in self.raw:
            return self.raw[key]
        if key in self.failures:
            raise _BlobProblem(*self.failures[key])
        try:
            data = self.store.get(cid, timeout=self.timeout)
        except BlobNotFoundError as e:
            return self._fail(key, "blob-missing", f"blob not in the store {self.store.url} ({e})")
        except IntegrityError as e:
            return self._fail(key, "blob-modified", f"the store's bytes do not match the CID ({e})")
        except StoreError as e:
            return self._fail(key, "blob-unreadable", f"the store could not return it ({e})")
        self.fetched += 1
        self.bytes += len(data)
        got = sha256(data)
        if got != key[0]:
            return self._fail(key, "digest-mismatch",
                              f"sha256 of the blob is {hx(got)}, the chain records {hx(key[0])}")
        self.raw[key] = data
        return data

    def model(self, digest: bytes, cid: str, expected: dict | None) -> tuple[OrderedDict, dict]:
        key = (bytes(digest), cid)
        if key in self.models:
            state, meta = self.models[key]
            if expected is not None:
                try:
                    check_state(state, expected)
                except CodecError as e:
                    raise _BlobProblem("model-shape", str(e)) from e
            return state, meta
        data = self.blob(digest, cid)
        try:
            state, meta = decode_model(data, expected)
        except CodecError as e:
            self.failures[key] = ("model-invalid", f"not a usable model blob: {e}")
            raise _BlobProblem(*self.failures[key]) from e
        self.models[key] = (OrderedDict(state), meta)
        return self.models[key]

    def _fail(self, key, kind: str, message: str):
        self.failures[key] = (kind, message)
        raise _BlobProblem(kind, message)


class _BlobProblem(ChainflError):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


# --- the audit --------------------------------------------------------------------------------
class _Auditor:
    def __init__(self, history: History, store, timeout: float):
        self.h = history
        self.cache = BlobCache(store, timeout)
        self.violations: list[Violation] = []
        self.warnings: list[str] = []
        self.nodes: dict[str, NodeSummary] = {}
        self.lineage: list[dict] = []
        self.rounds: list[dict] = []
        self.aggregates: list[dict] = []
        self.flags: list[dict] = []
        self.spec = None
        self.expected: dict | None = None
        self.param_order: list[str] | None = None
        self.n_nodes = 1

    # -- helpers --------------------------------------------------------------------------
    def violate(self, kind: str, message: str, *, round=None, seq=None, node=None, cid=None) -> None:
        v = Violation(kind, message, round=round, seq=seq, node=node, cid=cid)
        self.violations.append(v)
        if node is not None:
            self.node(node).violations += 1

    def node(self, address: str) -> NodeSummary:
        if address not in self.nodes:
            self.nodes[address] = NodeSummary(address)
        return self.nodes[address]

    def load_model(self, label: str, digest: bytes, cid: str, *, node=None, round=None, seq=None,
                   parent: bytes | None = None):
        """Fetch + verify + decode; records a lineage entry; returns the state or None."""
        entry = {"label": label, "digest": hx(digest), "cid": cid, "node": node, "parent": hx(parent),
                 "round": round, "seq": seq, "status": "ok"}
        self.lineage.append(entry)
        try:
            state, meta = self.cache.model(digest, cid, self.expected)
        except _BlobProblem as p:
            entry["status"] = p.kind
            self.violate(p.kind, f"{label}: {p.message}", round=round, seq=seq, node=node, cid=cid)
            return None
        if self.expected is None:
            self.expected = expected_of(state)
        return state

    def ordered(self, state: OrderedDict) -> OrderedDict:
        """The state in the model's parameter order (the order the agents flatten in)."""
        if self.param_order and set(self.param_order) == set(state):
            return OrderedDict((k, state[k]) for k in self.param_order)
        return state

    # -- spec -------------------------------------------------------------------------------
    def load_spec(self) -> None:
        from chainfl.agents.spec import TaskSpec

        c = self.h.created
        try:
            data = self.cache.blob(c.config_digest, c.config_cid)
            self.spec = TaskSpec.from_bytes(data)
        except _BlobProblem as p:
            self.violate(p.kind, f"task spec: {p.message}", node=c.coordinator, cid=c.config_cid)
            return
        except ChainflError as e:
            self.violate("spec-invalid", f"task spec is not a valid TaskSpec: {e}", node=c.coordinator,
                         cid=c.config_cid)
            return
        expected_mode = "chained" if self.h.mode == Mode.CHAINED else "federated"
        if self.spec.mode != expected_mode:
            self.violate("spec-mode", f"the spec says mode {self.spec.mode!r} but the task was created "
                         f"{expected_mode}", node=c.coordinator, cid=c.config_cid)
        self.n_nodes = max(1, len(self.spec.nodes))
        if self.spec.model and self.spec.feature_names:
            try:
                from chainfl.learning.models import ModelConfig, expected_shapes

                shapes = expected_shapes(ModelConfig.from_dict(self.spec.model), len(self.spec.feature_names))
                self.param_order = list(shapes)
            except ChainflError as e:
                self.warnings.append(f"spec model {self.spec.model} cannot be built: {e}")

    def participant(self, address: str) -> bool:
        return self.spec is None or address.lower() in {a.lower() for a in self.spec.nodes}

    # -- chained ----------------------------------------------------------------------------
    def chained(self) -> None:
        c = self.h.created
        head = accepted = c.initial_digest
        head_node = None
        expected = c.first_node
        seq = 0
        cids = {c.initial_digest: c.initial_cid}
        losses: dict[int, list[float]] = {}
        for step in self.h.steps:
            if isinstance(step, Handoff):
                rnd = (step.seq - 1) // self.n_nodes + 1
                where = dict(round=rnd, seq=step.seq, node=step.node, cid=step.cid)
                s = self.node(step.node)
                s.contributions += 1
                s.samples += step.samples
                losses.setdefault(rnd, []).append(step.loss)
                if step.node != expected:
                    self.violate("handoff-turn", f"handoff recorded by {step.node} but it was "
                                 f"{expected}'s turn", **where)
                if step.parent != head:
                    self.violate("handoff-order", f"parent {hx(step.parent)} is not the head "
                                 f"{hx(head)} at that moment (handoff out of order)", **where)
                if step.seq != seq + 1:
                    self.violate("handoff-seq", f"sequence number {step.seq} follows {seq}", **where)
                if step.digest == step.parent:
                    self.violate("handoff-unchanged", "the new model equals its parent", **where)
                if not self.participant(step.node):
                    self.violate("not-participant", f"{step.node} is not a participant in the task spec",
                                 **where)
                if not self.participant(step.next):
                    self.violate("not-participant", f"next node {step.next} is not a participant in "
                                 f"the task spec", **where)
                elif self.spec is not None and self.participant(step.node) \
                        and step.next.lower() != self.spec.next_node(step.node).lower():
                    self.warnings.append(f"seq {step.seq}: {step.node} handed over to {step.next}, not to "
                                         f"{self.spec.next_node(step.node)} as the spec's order says")
                self.load_model(f"handoff seq {step.seq}", step.digest, step.cid, node=step.node,
                                round=rnd, seq=step.seq, parent=step.parent)
                cids[step.digest] = step.cid
                accepted, head, head_node, expected, seq = step.parent, step.digest, step.node, step.next, step.seq
            elif isinstance(step, Rejection):
                where = dict(round=(seq - 1) // self.n_nodes + 1 if seq else None, seq=seq or None,
                             node=step.node, cid=cids.get(step.digest))
                self.flags.append({"kind": "rejection", "round": where["round"], "seq": where["seq"],
                                   "node": step.producer, "by": step.node, "reason": step.reason})
                self.node(step.node).rejections_issued += 1
                self.node(step.producer).rejections_received += 1
                if step.node != expected:
                    self.violate("rejection-turn", f"rejection by {step.node} but it was {expected}'s turn",
                                 **where)
                if step.digest != head or head == accepted:
                    self.violate("rejection-inconsistent", f"rejected {hx(step.digest)} but the "
                                 f"unaccepted head was {hx(head) if head != accepted else 'none'}", **where)
                if step.producer != head_node:
                    self.violate("rejection-inconsistent", f"rejection names producer {step.producer}, "
                                 f"the head was produced by {head_node}", **where)
                if step.restored != accepted:
                    self.violate("rejection-inconsistent", f"head returned to {hx(step.restored)}, not to "
                                 f"the last accepted model {hx(accepted)}", **where)
                self.lineage.append({"label": f"rejection of seq {seq}", "digest": hx(step.digest),
                                     "cid": cids.get(step.digest), "node": step.node, "parent": None,
                                     "round": where["round"], "seq": seq or None, "status": "rejected",
                                     "reason": step.reason, "restored": hx(step.restored)})
                head, head_node = step.restored, None
            elif isinstance(step, Skip):
                self.node(step.skipped).skipped += 1
                if step.skipped != expected:
                    self.violate("skip-inconsistent", f"skip names {step.skipped} but it was {expected}'s "
                                 f"turn", node=step.skipped, seq=seq or None)
                if step.by != self.h.created.coordinator:
                    self.violate("skip-inconsistent", f"turn skipped by {step.by}, not the task's "
                                 f"coordinator {self.h.created.coordinator}", node=step.by, seq=seq or None)
                expected = step.next
        for rnd, values in sorted(losses.items()):
            self.rounds.append({"round": rnd, "handoffs": len(values),
                                "mean_loss": float(np.mean(values)), "min_loss": float(np.min(values)),
                                "max_loss": float(np.max(values))})
        self.replayed = {"head": head, "accepted": accepted, "seq": seq, "expected": expected,
                         "head_cid": cids.get(head), "accepted_cid": cids.get(accepted)}

    # -- federated --------------------------------------------------------------------------
    def federated(self) -> None:
        c = self.h.created
        head, head_cid = c.initial_digest, c.initial_cid
        strategy = None
        if self.spec is not None:
            if not self.spec.strategy:
                self.violate("spec-invalid", "federated task spec names no aggregation strategy",
                             node=c.coordinator, cid=c.config_cid)
            else:
                from chainfl.aggregation.strategies import Strategy

                try:
                    strategy = Strategy.from_spec(self.spec.strategy)
                except (ChainflError, TypeError, KeyError) as e:
                    self.violate("spec-invalid", f"strategy {self.spec.strategy} cannot be rebuilt: {e}",
                                 node=c.coordinator, cid=c.config_cid)
        previous = 0
        prev_global = None          # (digest, cid) of the global model of the round before
        for r in self.h.rounds:
            where = dict(round=r.round, node=c.coordinator)
            if r.round != previous + 1:
                self.violate("round-order", f"round {r.round} opened after round {previous}", **where)
            if r.global_model != head:
                self.violate("round-order", f"round opened on {hx(r.global_model)}, the current global "
                             f"model is {hx(head)}", cid=head_cid, **where)
            previous = r.round
            global_state = self.global_state(r.global_model, head_cid) if r.global_model == head else None
            seen = set()
            updates = []
            for s in r.submissions:
                w = dict(round=r.round, node=s.node, cid=s.cid)
                summary = self.node(s.node)
                summary.contributions += 1
                summary.samples += s.samples
                if s.node in seen:
                    self.violate("duplicate-update", "second update from the same node in one round", **w)
                seen.add(s.node)
                if s.parent != r.global_model:
                    self.violate("update-parent", f"update trained on {hx(s.parent)}, not the round's "
                                 f"global model {hx(r.global_model)}", **w)
                if not self.participant(s.node):
                    self.violate("not-participant", f"{s.node} is not a participant in the task spec", **w)
                state = self.load_model(f"round {r.round} update", s.digest, s.cid, node=s.node,
                                        round=r.round, parent=s.parent)
                updates.append((s, state))
            for node, reason in r.flags.items():
                self.flags.append({"kind": "flag", "round": r.round, "seq": None, "node": node,
                                   "by": c.coordinator, "reason": reason})
                self.node(node).flags += 1
                if node not in seen:
                    self.violate("flag-inconsistent", "flagged a node that submitted no update",
                                 round=r.round, node=node)
            losses = [s.loss for s in r.submissions]
            row = {"round": r.round, "updates": len(r.submissions), "flagged": len(r.flags),
                   "included": len(r.included), "finalized": r.finalized,
                   "mean_loss": float(np.mean(losses)) if losses else None,
                   "samples": int(sum(s.samples for s in r.submissions))}
            self.rounds.append(row)
            if not r.finalized:
                if r is not self.h.rounds[-1]:
                    self.violate("round-order", "round never finalized but a later round was opened", **where)
                else:
                    self.warnings.append(f"round {r.round} is still open (not finalized)")
                continue
            fw = dict(round=r.round, node=c.coordinator, cid=r.cid)
            if r.parent != r.global_model:
                self.violate("aggregate-parent", f"finalized on {hx(r.parent)}, the round was opened "
                             f"on {hx(r.global_model)}", **fw)
            for node in r.included:
                self.node(node).included += 1
                if node not in seen:
                    self.violate("included-inconsistent", f"{node} is included but submitted no update", **fw)
                if node in r.flags:
                    self.violate("included-inconsistent", f"{node} is included but was flagged", **fw)
            aggregate = self.load_model(f"round {r.round} aggregate", r.digest, r.cid, node=c.coordinator,
                                        round=r.round, parent=r.parent)
            previous_state = None
            if strategy is not None and strategy.server_momentum and prev_global is not None:
                previous_state = self.global_state(*prev_global)
            self.recompute(r, strategy, global_state, updates, aggregate is not None,
                           previous_state, prev_global is not None)
            prev_global = (r.global_model, head_cid)
            head, head_cid = r.digest, r.cid
        self.replayed = {"head": head, "accepted": head, "seq": previous, "expected": None,
                         "head_cid": head_cid, "accepted_cid": head_cid,
                         "round_open": bool(self.h.rounds and not self.h.rounds[-1].finalized)}

    def global_state(self, digest: bytes, cid: str):
        """The round's global model (already listed in the lineage as the previous aggregate)."""
        try:
            return self.cache.model(digest, cid, self.expected)[0]
        except _BlobProblem:
            return None      # its failure was reported where it was recorded

    def recompute(self, r: Round, strategy, global_state, updates, have_aggregate: bool,
                  previous_state=None, needs_previous: bool = False) -> None:
        """Recompute round ``r``'s aggregate the way an honest coordinator makes it.

        The honest coordinator aggregates *every* verifiable update it has read, and it reads the
        events up to some block: its inputs are a prefix, by (block, log index), of the round's
        submissions. So for k = all submissions down to 1 the prefix of length k is aggregated with
        the recorded strategy (unreadable updates left out, and they must be flagged on chain); the
        round passes only if for some k (a) the bytes equal the recorded aggregate, (b) the on-chain
        included nodes equal the strategy's, (c) the on-chain flags equal the strategy's flags plus
        the prefix's unreadable updates, and (d) no later submission is included or flagged.
        """
        from chainfl.learning.models import flatten, unflatten

        fw = dict(round=r.round, node=self.h.created.coordinator, cid=r.cid)
        record = {"round": r.round, "digest": hx(r.digest), "cid": r.cid, "strategy":
                  None if strategy is None else strategy.name, "match": False, "inputs": None,
                  "recomputed": None}
        self.aggregates.append(record)
        if strategy is None or global_state is None or not have_aggregate \
                or (needs_previous and strategy.server_momentum and previous_state is None):
            why = ("no strategy" if strategy is None else "the global model is unavailable"
                   if global_state is None else "the aggregate blob is unavailable" if not have_aggregate
                   else "the previous global model is unavailable")
            record["inputs"] = f"not recomputed: {why}"
            self.violate("aggregate-unverifiable", f"aggregate cannot be recomputed: {why}", **fw)
            return
        _, meta = self.cache.models[(r.digest, r.cid)]
        reference = self.ordered(global_state)
        ref_vec = flatten(reference)
        prev_vec = None if previous_state is None else flatten(self.ordered(previous_state))
        flagged, included = set(r.flags), set(r.included)
        ordered = sorted(updates, key=lambda u: (u[0].at.block, u[0].at.log_index))
        vectors = {id(s): flatten(self.ordered(st)) for s, st in ordered if st is not None}
        first_error = None      # why the largest prefix could not be recomputed
        first_match = None      # (k, result, problems) of the largest prefix whose bytes match
        for k in range(len(ordered), 0, -1):
            prefix, rest = ordered[:k], ordered[k:]
            if rest and rest[0][0].at.block == prefix[-1][0].at.block:
                continue        # the coordinator reads whole blocks
            unreadable = {s.node for s, st in prefix if st is None}
            unflagged = sorted(unreadable - flagged)
            if unflagged:
                first_error = first_error or (f"the update of {', '.join(unflagged)} is unavailable "
                                              f"and not flagged")
                continue
            try:
                result = self._aggregate(strategy, prefix, vectors, ref_vec, prev_vec)
            except ChainflError as e:
                first_error = first_error or f"first {k} submission(s): {e}"
                continue
            got = sha256(encode_model(unflatten(result.vector, reference), meta))
            record["recomputed"] = record["recomputed"] or hx(got)
            if got != r.digest:
                continue
            problems = self._selection_problems(r, prefix, rest, result, unreadable)
            if first_match is None or not problems:
                first_match = (k, result, problems)
            if not problems:
                break
        if first_match is not None:
            k, result, problems = first_match
            record.update(match=True, inputs=f"first {k} of {len(ordered)} submission(s) in block order",
                          recomputed=hx(r.digest), prefix=k, strategy_included=list(result.included),
                          strategy_flagged=list(result.flagged), late=[s.node for s, _ in ordered[k:]])
            for kind, message, node, cid in problems:
                self.violate(kind, f"round {r.round}: {message}", round=r.round, node=node, cid=cid)
            return
        if record["recomputed"] is None and first_error is not None and "unavailable" in first_error:
            record["inputs"] = f"not recomputed: {first_error}"
            self.violate("aggregate-unverifiable", f"aggregate cannot be recomputed: {first_error}", **fw)
            return
        detail = f"recomputed {record['recomputed']}" if record["recomputed"] else first_error
        self.violate("aggregate-mismatch", f"the aggregate does not match its recorded inputs (any "
                     f"prefix of the round's submissions in block order) with strategy "
                     f"{strategy.name!r} (recorded {hx(r.digest)}; {detail})", **fw)
        # name the nodes: the coordinator must have read every submission up to the last one it
        # included or flagged (whole blocks); compare its selection with the strategy's on those
        used = included | flagged
        last = max((n for n, (s, _) in enumerate(ordered) if s.node in used), default=-1)
        if last < 0:
            return
        k = last + 1
        while k < len(ordered) and ordered[k][0].at.block == ordered[last][0].at.block:
            k += 1
        prefix, rest = ordered[:k], ordered[k:]
        unreadable = {s.node for s, st in prefix if st is None}
        try:
            result = self._aggregate(strategy, prefix, vectors, ref_vec, prev_vec)
        except ChainflError:
            return
        for kind, message, node, cid in self._selection_problems(r, prefix, rest, result, unreadable):
            self.violate(kind, f"round {r.round}: {message}", round=r.round, node=node, cid=cid)

    @staticmethod
    def _aggregate(strategy, prefix, vectors, ref_vec, prev_vec):
        from chainfl.aggregation.strategies import Update
        from chainfl.errors import LearningError

        ups = [Update(node=s.node, digest=s.digest, state_vec=vectors[id(s)], n_samples=s.samples)
               for s, st in prefix if st is not None]
        if not ups:
            raise LearningError("no verifiable update")
        return strategy.aggregate(ups, reference=ref_vec, previous=prev_vec)

    @staticmethod
    def _selection_problems(r: Round, prefix, rest, result, unreadable: set) -> list:
        """(kind, message, node, cid) for each way the on-chain included/flagged sets differ from
        what the strategy decided on ``prefix`` (``rest``: the submissions read after it)."""
        flagged, included = set(r.flags), set(r.included)
        want_included, want_flagged = set(result.included), set(result.flagged) | unreadable
        out = []
        for s, _ in prefix:
            n, at = s.node, f"(CID {s.cid})"
            if n not in included and n not in flagged:
                out.append(("update-ignored", f"node {n} submitted {at} but is neither included nor "
                            f"flagged", n, s.cid))
            elif n in flagged and n not in want_flagged:
                out.append(("flag-inconsistent", f"node {n} flagged on chain but the recorded strategy "
                            f"does not flag it {at}; reason given: {r.flags[n]!r}", n, s.cid))
            elif n in included and n not in want_included:
                why = "flags it" if n in want_flagged else "does not use it"
                out.append(("included-inconsistent", f"node {n} is included on chain but the recorded "
                            f"strategy {why} {at}", n, s.cid))
        for s, _ in rest:
            n, at = s.node, f"(CID {s.cid})"
            if n in flagged:
                out.append(("flag-inconsistent", f"node {n} flagged on chain but the recorded strategy "
                            f"does not flag it {at}; reason given: {r.flags[n]!r}", n, s.cid))
            elif n in included:
                out.append(("included-inconsistent", f"node {n} is included on chain but its update is "
                            f"not among the aggregated ones {at}", n, s.cid))
        return out

    # -- final state and release ------------------------------------------------------------
    def check_final(self, live) -> None:
        """Compare the replay with the contract's current task view (``live``: TaskState or None)."""
        if live is None:
            return
        rep = self.replayed
        c = self.h.created
        diffs = []
        if live.head != rep["head"]:
            diffs.append(f"head {hx(live.head)} (replayed {hx(rep['head'])})")
        if live.accepted != rep["accepted"]:
            diffs.append(f"accepted {hx(live.accepted)} (replayed {hx(rep['accepted'])})")
        if live.seq != rep["seq"]:
            diffs.append(f"seq {live.seq} (replayed {rep['seq']})")
        if self.h.mode == Mode.CHAINED and live.expected != rep["expected"]:
            diffs.append(f"turn of {live.expected} (replayed {rep['expected']})")
        if live.closed != (self.h.closed is not None):
            diffs.append(f"closed={live.closed} (events say {self.h.closed is not None})")
        if diffs:
            self.violate("state-mismatch", "the contract's task state differs from its event history: "
                         + "; ".join(diffs) + " — state changed without an event (tampered dev chain?)",
                         seq=live.seq if self.h.mode == Mode.CHAINED else None,
                         round=live.seq if self.h.mode == Mode.FEDERATED else None,
                         node=c.coordinator, cid=rep.get("head_cid"))

    def check_release(self) -> dict | None:
        closed = self.h.closed
        final = {"digest": hx(self.replayed["head"]), "cid": self.replayed["head_cid"]}
        self.final = final
        if closed is None or closed.release_digest is None:
            return None
        cid = closed.release_cid or ""
        info = {"digest": hx(closed.release_digest), "cid": cid, "status": "ok",
                "matches_final": False, "meta": None}
        state = self.load_model("release", closed.release_digest, cid, node=closed.by,
                                parent=self.replayed["head"])
        if state is None:
            info["status"] = self.lineage[-1]["status"]
            return info
        _, meta = self.cache.models[(closed.release_digest, cid)]
        info["meta"] = {k: v for k, v in meta.items() if k != "scaler"}
        if self.spec is not None:
            from chainfl.audit.detect import same_json

            spec_values = {"scaler": self.spec.scaler, "feature_names": list(self.spec.feature_names),
                           "model": self.spec.model}
            for key, want in spec_values.items():
                if not same_json(meta.get(key), want):
                    info["status"] = "release-meta"
                    self.violate("release-meta", f"the release {cid}'s {key} differs from the task spec's "
                                 f"(detection would use it)", node=closed.by, cid=cid)
        for label in ("head", "accepted"):
            d, cid = self.replayed[label], self.replayed[f"{label}_cid"]
            if cid is None:
                continue
            try:
                final_state, _ = self.cache.model(d, cid, self.expected)
            except _BlobProblem:
                continue
            if all(np.array_equal(final_state[k], state[k]) and final_state[k].dtype == state[k].dtype
                   for k in final_state):
                info["matches_final"] = label
                break
        if not info["matches_final"]:
            info["status"] = "release-mismatch"
            self.violate("release-mismatch", "the release's weights equal neither the final head nor the "
                         "last accepted model", node=closed.by, cid=closed.release_cid)
        return info


def verify_history(history: History, store, live_state=None, *, timeout: float = 10.0,
                   chain_url: str = "", registry_address: str = "") -> AuditReport:
    """Verify ``history`` against ``store`` (and the contract's current task view ``live_state``,
    a :class:`~chainfl.chain.registry.TaskState`, when given). Returns an :class:`AuditReport`."""
    started = time.perf_counter()
    a = _Auditor(history, store, timeout)
    for note in history.anomalies:
        a.violate("event-order", note, node=history.created.coordinator)
    a.load_spec()
    c = history.created
    a.load_model("initial model", c.initial_digest, c.initial_cid, node=c.coordinator)
    if history.mode == Mode.CHAINED:
        a.chained()
    else:
        a.federated()
    a.check_final(live_state)
    if a.spec is not None and history.closed is not None:
        if history.mode == Mode.CHAINED and len(history.handoffs) < a.spec.total_handoffs:
            a.warnings.append(f"task closed after {len(history.handoffs)} handoffs; the spec plans "
                              f"{a.spec.total_handoffs} ({a.spec.rounds} passes over {len(a.spec.nodes)} nodes)")
        done = sum(1 for r in history.rounds if r.finalized)
        if history.mode == Mode.FEDERATED and done < a.spec.rounds:
            a.warnings.append(f"task closed after {done} finalized rounds; the spec plans {a.spec.rounds}")
    release = a.check_release()
    summaries = a.nodes
    for address, s in summaries.items():
        if history.mode == Mode.CHAINED:
            losses = [h.loss for h in history.handoffs if h.node == address]
        else:
            losses = [sub.loss for r in history.rounds for sub in r.submissions if sub.node == address]
        s.mean_loss = float(np.mean(losses)) if losses else None
    report = AuditReport(task_id=history.task_id, registry=registry_address or history.registry,
                         chain=chain_url, store=getattr(store, "url", str(store)),
                         mode="chained" if history.mode == Mode.CHAINED else "federated",
                         spec=None if a.spec is None else a.spec.to_dict(), violations=a.violations,
                         warnings=a.warnings, nodes=dict(sorted(summaries.items())), lineage=a.lineage,
                         rounds=a.rounds, aggregates=a.aggregates, flags=a.flags, release=release,
                         final=a.final)
    report.counts = {"events": history.events, "handoffs": len(history.handoffs),
                     "rejections": sum(isinstance(s, Rejection) for s in history.steps),
                     "skips": sum(isinstance(s, Skip) for s in history.steps),
                     "rounds": len(history.rounds),
                     "updates": sum(len(r.submissions) for r in history.rounds),
                     "blobs_fetched": a.cache.fetched, "bytes_fetched": a.cache.bytes,
                     "aggregates_recomputed": sum(1 for x in a.aggregates if x["match"]),
                     "from_block": history.from_block, "to_block": history.to_block}
    report.seconds = time.perf_counter() - started
    return report
