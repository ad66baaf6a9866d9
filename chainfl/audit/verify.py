"""Verify a task's :class:`~chainfl.audit.history.History` against the store and the rules.

Two kinds of result, so that one misbehaving member never blocks a release:

* a **violation** (:class:`Violation`, ``report.ok`` is False, ``chainfl audit`` exits 1) is a
  break of the protocol: an included update or accepted handoff whose blob fails verification, an
  aggregate that does not recompute, a decision that contradicts the recorded strategy, a release
  that is not the final model or whose threshold does not follow from the recorded reports, chain
  state that differs from its events;
* a **finding** (:class:`Finding`) is misbehaviour the protocol handled and recorded: an update
  flagged (with its reason code: invalid, unavailable, copy, samples, screening), a handoff
  rejected by the next node, a silent node's turn skipped, a round abandoned. Findings are
  listed per node and leave the audit ok.

The checks live by family: :mod:`~chainfl.audit.blobs` (fetching and verifying blobs),
:mod:`~chainfl.audit.chained` (the handoff chain), :mod:`~chainfl.audit.federated` (rounds and
their decisions, recomputed with :func:`chainfl.aggregation.decision.decide_round` — the function
the coordinator calls) and :mod:`~chainfl.audit.release` (final state, release, threshold
evidence). This module holds the report types and the orchestration. When the store holds none of
the task's blobs (the spec itself is missing), the report says so in one violation naming the
store instead of listing every blob.

:func:`verify_history` reads the store only; :func:`chainfl.audit.audit_task` adds the chain reads.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field

import numpy as np

from chainfl.audit.blobs import BlobCache, BlobProblem, hx
from chainfl.audit.history import History, Rejection, Skip
from chainfl.chain.registry import Mode
from chainfl.errors import ChainflError
from chainfl.storage.codec import expected_of

log = logging.getLogger(__name__)

__all__ = ["Violation", "Finding", "NodeSummary", "AuditReport", "verify_history", "BlobCache", "hx"]


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


@dataclass(frozen=True)
class Finding:
    """Misbehaviour the protocol handled: ``kind`` is e.g. ``flagged:copy``, ``rejected:gate``,
    ``skipped``, ``abandoned``; ``node`` is who it is about."""

    kind: str
    node: str | None
    message: str
    round: int | None = None
    seq: int | None = None
    cid: str | None = None

    def __str__(self) -> str:
        where = ", ".join(x for x in (f"seq {self.seq}" if self.seq else "", f"round {self.round}"
                                      if self.round else "") if x)
        return f"[{self.kind}] {self.node or '-'}{' (' + where + ')' if where else ''}: {self.message}"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class NodeSummary:
    """What one account did in the task."""

    address: str
    contributions: int = 0          # handoffs (chained) or updates (federated)
    samples: int = 0                # training rows claimed over all contributions
    included: int = 0               # federated: updates that entered an aggregate
    excluded: int = 0               # federated: updates not selected by the rule (no blame)
    flags: int = 0                  # federated: updates flagged by the coordinator
    rejections_issued: int = 0      # chained: incoming models this node rejected
    rejections_received: int = 0    # chained: this node's models rejected by the next node
    skipped: int = 0                # chained: turns passed over by the coordinator
    violations: int = 0             # violations naming this node
    findings: int = 0               # handled misbehaviour of this node
    mean_loss: float | None = None  # mean recorded training loss
    misbehaviour: dict = field(default_factory=dict)   # finding kind -> count

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
    findings: list[Finding] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    nodes: dict[str, NodeSummary] = field(default_factory=dict)
    lineage: list[dict] = field(default_factory=list)     # every model: label, digest, cid, parent, node, status
    rounds: list[dict] = field(default_factory=list)      # per-round metrics
    aggregates: list[dict] = field(default_factory=list)  # federated recomputations
    flags: list[dict] = field(default_factory=list)       # flags and rejections: round/seq, node, reason
    release: dict | None = None
    final: dict | None = None                             # final model digest/cid
    closed: dict | None = None                            # why and how the task ended
    counts: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.violations

    def misbehaving(self) -> dict[str, dict]:
        """node -> {finding kind: count}, for the nodes with findings."""
        return {a: dict(n.misbehaviour) for a, n in self.nodes.items() if n.misbehaviour}

    def to_dict(self) -> dict:
        return {"task_id": self.task_id, "registry": self.registry, "chain": self.chain,
                "store": self.store, "mode": self.mode, "ok": self.ok, "spec": self.spec,
                "violations": [v.to_dict() | {"text": str(v)} for v in self.violations],
                "findings": [f.to_dict() | {"text": str(f)} for f in self.findings],
                "misbehaving": self.misbehaving(), "warnings": list(self.warnings),
                "nodes": {a: n.to_dict() for a, n in self.nodes.items()},
                "lineage": list(self.lineage), "rounds": list(self.rounds),
                "aggregates": list(self.aggregates), "flags": list(self.flags), "release": self.release,
                "final": self.final, "closed": self.closed, "counts": dict(self.counts),
                "seconds": round(self.seconds, 3)}


# --- the audit context ------------------------------------------------------------------------
class Auditor:
    """State shared by the check families while one history is verified."""

    def __init__(self, history: History, store, timeout: float):
        self.h = history
        self.cache = BlobCache(store, timeout)
        self.violations: list[Violation] = []
        self.findings: list[Finding] = []
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
        self.replayed: dict = {}
        self.final: dict | None = None
        self.spec_unseen = False          # the store does not hold the task's spec
        self.newton_references: dict = {}  # newton tasks: producer -> its RowsReference (or None)

    # -- recording ------------------------------------------------------------------------
    def violate(self, kind: str, message: str, *, round=None, seq=None, node=None, cid=None) -> None:
        self.violations.append(Violation(kind, message, round=round, seq=seq, node=node, cid=cid))
        if node is not None:
            self.node(node).violations += 1

    def find(self, kind: str, node: str | None, message: str, *, round=None, seq=None, cid=None) -> None:
        self.findings.append(Finding(kind, node, message, round=round, seq=seq, cid=cid))
        if node is not None:
            summary = self.node(node)
            summary.findings += 1
            summary.misbehaviour[kind] = summary.misbehaviour.get(kind, 0) + 1

    def node(self, address: str) -> NodeSummary:
        if address not in self.nodes:
            self.nodes[address] = NodeSummary(address)
        return self.nodes[address]

    # -- blobs ----------------------------------------------------------------------------
    def fetch_model(self, label: str, digest: bytes, cid: str, *, node=None, round=None, seq=None,
                    parent: bytes | None = None, layout: dict | None = None):
        """Fetch + verify + decode; records a lineage entry. Returns ``(state, meta)`` or raises
        :class:`BlobProblem` (the caller decides whether that is a violation or a finding).
        ``layout``: the tensors the blob must hold when it is not a model (a gbdt update)."""
        entry = {"label": label, "digest": hx(digest), "cid": cid, "node": node, "parent": hx(parent),
                 "round": round, "seq": seq, "status": "ok"}
        self.lineage.append(entry)
        try:
            state, meta = self.cache.model(digest, cid, layout if layout is not None else self.expected)
        except BlobProblem as p:
            entry["status"] = p.kind
            raise
        if self.expected is None and layout is None:
            self.expected = expected_of(state)
        return state, meta

    def load_model(self, label: str, digest: bytes, cid: str, *, node=None, round=None, seq=None,
                   parent: bytes | None = None):
        """:meth:`fetch_model` whose problems are violations; returns the state or None."""
        try:
            return self.fetch_model(label, digest, cid, node=node, round=round, seq=seq, parent=parent)[0]
        except BlobProblem as p:
            self.violate(p.kind, f"{label}: {p.message}", round=round, seq=seq, node=node, cid=cid)
            return None

    def ordered(self, state: OrderedDict) -> OrderedDict:
        """The state in the model's parameter order (the order the agents flatten in)."""
        if self.param_order and set(self.param_order) == set(state):
            return OrderedDict((k, state[k]) for k in self.param_order)
        return state

    def participant(self, address: str) -> bool:
        return self.spec is None or address.lower() in {a.lower() for a in self.spec.nodes}

    # -- spec -------------------------------------------------------------------------------
    def load_spec(self) -> None:
        from chainfl.agents.spec import TaskSpec

        from chainfl.agents.modelio import MAX_SPEC_BYTES

        c = self.h.created
        try:
            data = self.cache.blob(c.config_digest, c.config_cid, max_bytes=MAX_SPEC_BYTES)
            self.spec = TaskSpec.from_bytes(data)
        except BlobProblem as p:
            self.spec_unseen = p.unseen
            self.violate(p.kind, f"task spec: {p.message}", node=c.coordinator, cid=c.config_cid)
            return
        except ChainflError as e:
            self.violate("spec-invalid", f"task spec is not a valid TaskSpec: {e}", node=c.coordinator,
                         cid=c.config_cid)
            return
        self.cache.max_bytes = self.spec.max_blob_bytes
        expected_mode = "chained" if self.h.mode == Mode.CHAINED else "federated"
        if self.spec.mode != expected_mode:
            self.violate("spec-mode", f"the spec says mode {self.spec.mode!r} but the task was created "
                         f"{expected_mode}", node=c.coordinator, cid=c.config_cid)
        if [a.lower() for a in c.nodes] != [a.lower() for a in self.spec.nodes]:
            self.violate("spec-nodes", f"the node set recorded on chain ({len(c.nodes)} nodes) differs from the "
                         f"spec's ({len(self.spec.nodes)}); the contract enforces the chain's",
                         node=c.coordinator, cid=c.config_cid)
        self.n_nodes = max(1, len(self.spec.nodes))
        if self.spec.model and self.spec.feature_names:
            try:
                from chainfl.learning.models import ModelConfig, expected_shapes

                shapes = expected_shapes(ModelConfig.from_dict(self.spec.model), len(self.spec.feature_names))
                self.param_order = list(shapes)
            except ChainflError as e:
                self.warnings.append(f"spec model {self.spec.model} cannot be built: {e}")


def _store_verdict(a: Auditor, store) -> None:
    """When the store lacks even the spec, one violation says so (and why nothing else could be
    checked) instead of one per blob: it reads as the wrong store, not as tampering."""
    if not a.spec_unseen:
        return
    kept = [v for v in a.violations if v.kind not in ("blob-missing", "blob-unreadable")]
    missing = len(a.violations) - len(kept)
    a.violations[:] = [Violation(
        "store-missing", f"the store {getattr(store, 'url', store)} holds none of this task's blobs "
        f"({missing} not found, the task spec {a.h.created.config_cid} among them); audit against the store "
        f"the task used (--store / CHAINFL_STORE); nothing was checked beyond the chain events",
        node=a.h.created.coordinator, cid=a.h.created.config_cid)] + kept


def verify_history(history: History, store, live_state=None, *, timeout: float = 10.0,
                   chain_url: str = "", registry_address: str = "") -> AuditReport:
    """Verify ``history`` against ``store`` (and the contract's current task view ``live_state``,
    a :class:`~chainfl.chain.registry.TaskState`, when given). Returns an :class:`AuditReport`."""
    from chainfl.audit import chained, federated, release

    started = time.perf_counter()
    a = Auditor(history, store, timeout)
    for note in history.anomalies:
        a.violate("event-order", note, node=history.created.coordinator)
    a.load_spec()
    c = history.created
    a.load_model("initial model", c.initial_digest, c.initial_cid, node=c.coordinator)
    if history.mode == Mode.CHAINED:
        chained.replay(a)
    else:
        federated.replay(a)
    release.check_final(a, live_state)
    release.check_planned(a)
    release_info = release.check_release(a)
    release.check_stopping(a, release_info)
    _store_verdict(a, store)
    for address, s in a.nodes.items():
        if history.mode == Mode.CHAINED:
            losses = [h.loss for h in history.handoffs if h.node == address]
        else:
            losses = [sub.loss for r in history.rounds for sub in r.submissions if sub.node == address]
        s.mean_loss = float(np.mean(losses)) if losses else None
    closed = None
    if history.closed is not None:
        closed = {"by": history.closed.by, "reason": history.closed.reason, "block": history.closed.at.block,
                  "evidence_cid": history.closed.evidence_cid}
    report = AuditReport(task_id=history.task_id, registry=registry_address or history.registry,
                         chain=chain_url, store=getattr(store, "url", str(store)),
                         mode="chained" if history.mode == Mode.CHAINED else "federated",
                         spec=None if a.spec is None else a.spec.to_dict(), violations=a.violations,
                         findings=a.findings, warnings=a.warnings, nodes=dict(sorted(a.nodes.items())),
                         lineage=a.lineage, rounds=a.rounds, aggregates=a.aggregates, flags=a.flags,
                         release=release_info, final=a.final, closed=closed)
    report.counts = {"events": history.events, "handoffs": len(history.handoffs),
                     "rejections": sum(isinstance(s, Rejection) for s in history.steps),
                     "skips": sum(isinstance(s, Skip) for s in history.steps),
                     "rounds": len(history.rounds),
                     "abandoned": sum(1 for r in history.rounds if r.abandoned),
                     "updates": sum(len(r.submissions) for r in history.rounds),
                     "findings": len(a.findings),
                     "blobs_fetched": a.cache.fetched, "bytes_fetched": a.cache.bytes,
                     "aggregates_recomputed": sum(1 for x in a.aggregates if x["match"]),
                     "from_block": history.from_block, "to_block": history.to_block}
    report.seconds = time.perf_counter() - started
    return report
