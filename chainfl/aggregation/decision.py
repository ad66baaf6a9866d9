"""How a federated round ends: a decision on every submitted update, recomputable by anyone.

The coordinator and the auditor call the same pure function, :func:`decide_round`, on the same
inputs — the round's submissions in chain order (block, log index), each with its decoded blob or
the reason it is unusable, the task's recorded strategy, the committed sample counts — so the
decision on chain can be recomputed bit for bit. Every submitted update gets exactly one verdict:

* **flagged** (suspicious, blamed on the node), with a reason that starts with a stable code:

  ``invalid``      the blob fails verification (digest, size cap, not a model of the task's shape);
  ``unavailable``  the blob never resolved within the task's fetch patience (the one verdict an
                   auditor cannot recompute: it depends on when the coordinator looked);
  ``copy``         the blob was made by another node or for another task/round (its meta says so:
                   an exact copy of someone else's update), or its weights equal an earlier update's;
  ``samples``      it claims more training rows than the node committed in its statistics;
  ``screening``    the strategy's screening flagged it (e.g. far from every other update; for a
                   gbdt task, labels that disagree with the global model);
  ``bounds``       (gbdt) its histograms break the bounds every honest update meets exactly
                   (:mod:`chainfl.aggregation.boosting`);
* **excluded** without blame: not selected by the rule (Krum, Multi-Krum), or — in a task with
  peer validation — left out because the other nodes' signed scores of it on their validation
  rows are clearly negative (:mod:`chainfl.aggregation.peer`; the scores are in ``scores``);
* **included** in the aggregate.

When nothing is usable (no submission, everything flagged, fewer than the strategy's
``min_updates``) there is no aggregate: the round is *abandoned* with the reason, the global model
stays and the next round starts from it.

Checks run in this order and the first that fails gives the reason: blob problems, meta binding,
sample cap, duplicate weights (the earliest submission of the same weights keeps them), then
peer validation (when given), then the strategy on what is left. Pure: no chain, no store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from chainfl.aggregation.strategies import Strategy, Update
from chainfl.errors import LearningError

__all__ = ["Candidate", "RoundOutcome", "decide_round", "REASON_CODES", "reason_code", "UPDATE_KIND"]

#: Codes that start every flag reason (``"<code>: <detail>"``).
REASON_CODES = ("invalid", "unavailable", "copy", "samples", "screening", "peer", "bounds", "order")
#: ``kind`` in the meta of a node's federated update blob (see chainfl.agents.modelio).
UPDATE_KIND = "update"


def reason_code(reason: str) -> str:
    """The code a flag reason starts with (``"screening: ..."`` -> ``"screening"``), else ``""``."""
    head = str(reason).split(":", 1)[0].strip()
    return head if head in REASON_CODES else ""


@dataclass(frozen=True)
class Candidate:
    """One submitted update, as the decision sees it."""

    node: str                         # submitter (checksummed address)
    digest: bytes                     # sha256 of the blob (the canonical sort key)
    samples: int                      # claimed training rows (the FedAvg weight)
    vector: np.ndarray | None = None  # flat float32 weights; None when the blob is unusable
    meta: dict | None = None          # the blob's codec meta
    problem: str | None = None        # "<code>: why" when the blob is unusable (vector None)


@dataclass
class RoundOutcome:
    """The decision on one round."""

    included: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    flagged: dict[str, str] = field(default_factory=dict)     # node -> "<code>: reason"
    vector: np.ndarray | None = None                          # the aggregate (networks); None = abandon
    abandon_reason: str | None = None
    scores: dict[str, dict] = field(default_factory=dict)     # screening scores of the strategy
    state: dict | None = None                                 # gbdt: the new global state

    @property
    def abandoned(self) -> bool:
        return self.vector is None and self.state is None


def _binding_problem(c: Candidate, task_id: int, round_: int) -> str | None:
    meta = c.meta or {}
    maker = str(meta.get("node", ""))
    if meta.get("kind") != UPDATE_KIND or maker.lower() != c.node.lower() \
            or meta.get("task") != task_id or meta.get("step") != round_:
        return (f"copy: the blob is a {meta.get('kind')!r} made by {maker or '?'} for task "
                f"{meta.get('task')!r} round {meta.get('step')!r}, not {c.node}'s update for task "
                f"{task_id} round {round_}")
    return None


def decide_round(candidates: Sequence[Candidate], strategy: Strategy, *, task_id: int, round_: int,
                 reference: np.ndarray | None, previous: np.ndarray | None = None,
                 committed: dict[str, int] | None = None, boosting=None, peer=None) -> RoundOutcome:
    """The verdict on every candidate (given in chain order) and the aggregate; see the module doc.

    ``committed``: node address (any case) -> training rows it committed (absent = no cap).
    gbdt tasks: ``strategy`` is a :class:`~chainfl.aggregation.boosting.BoostingStrategy`,
    ``boosting=(GBDTConfig, global_state)`` and the candidates' vectors are the nodes'
    histogram updates; the outcome carries the new global ``state``.

    ``peer``: ``(PeerConfig, rows)`` with ``rows`` reporter (lower case) -> candidate digest
    (``0x`` hex, lower case) -> :data:`~chainfl.aggregation.peer.REPORT_FIELDS` row (the verified
    reports, :func:`chainfl.agents.peerreports.peer_inputs`); a candidate a reporter did not
    score counts as not reported by it.
    """
    caps = {k.lower(): int(v) for k, v in (committed or {}).items()}
    out = RoundOutcome()
    usable: list[Candidate] = []
    first_of: dict[bytes, str] = {}              # weight bytes -> earliest node that sent them
    for c in candidates:
        reason = c.problem if c.vector is None else _binding_problem(c, task_id, round_)
        if c.vector is None and not reason:
            reason = "invalid: no usable blob"
        cap = caps.get(c.node.lower())
        if reason is None and cap is not None and int(c.samples) > cap:
            reason = (f"samples: claims {int(c.samples)} training rows, but committed {cap} in its "
                      f"statistics")
        if reason is None:
            key = (np.asarray(c.vector, dtype=np.float32) + np.float32(0.0)).tobytes()
            if key in first_of:
                reason = f"copy: the same weights as {first_of[key]}'s earlier update"
            else:
                first_of[key] = c.node
        if reason is None:
            usable.append(c)
        else:
            out.flagged[c.node] = reason
    if not usable:
        out.abandon_reason = ("no update was submitted" if not candidates else
                              f"no usable update ({len(out.flagged)} flagged)")
        return out
    if peer is not None:
        usable = _peer_round(out, usable, *peer)
        if not usable:
            out.abandon_reason = f"no update left after peer validation ({len(out.excluded)} excluded by peers)"
            return out
    if boosting is not None:
        return _boosting_round(out, usable, strategy, boosting)
    updates = [Update(node=c.node, digest=c.digest, state_vec=c.vector, n_samples=int(c.samples))
               for c in usable]
    try:
        result = strategy.aggregate(updates, reference=reference, previous=previous)
    except LearningError as e:
        out.excluded = sorted(c.node for c in usable)
        out.abandon_reason = f"no aggregate from {len(usable)} usable update(s): {e}"
        return out
    for node in result.flagged:
        out.flagged[node] = "screening: " + _screen_reason(result.scores.get(node, {}))
    out.included = list(result.included)
    out.excluded = out.excluded + list(result.excluded)
    out.vector = result.vector
    out.scores = {**result.scores, **{n: {**result.scores.get(n, {}), **s} for n, s in out.scores.items()}}
    return out


def _peer_round(out: RoundOutcome, usable: list[Candidate], cfg, rows) -> list[Candidate]:
    """Peer validation: the usable candidates the peers' median scores keep; the others are
    excluded (no blame) with their statistics in ``out.scores[node]["peer"]``."""
    from chainfl.aggregation.peer import REPORT_FIELDS, decide

    reporters = sorted(rows)
    ids = [c.node.lower() for c in usable]
    R = np.zeros((len(reporters), len(usable), len(REPORT_FIELDS)), dtype=np.float64)
    for i, rep in enumerate(reporters):
        for j, c in enumerate(usable):
            row = rows[rep].get("0x" + bytes(c.digest).hex())
            if row is not None:
                R[i, j] = row
    if not reporters:
        for c in usable:
            out.scores[c.node] = {"peer": {"reason": "kept: no peer reports"}}
        return usable
    decision = decide(R, reporters, ids, cfg)
    excluded = set(decision.excluded)
    for c in usable:
        out.scores[c.node] = {"peer": decision.scores[c.node.lower()]}
    out.excluded = out.excluded + [c.node for c in usable if c.node.lower() in excluded]
    return [c for c in usable if c.node.lower() not in excluded]


def _boosting_round(out: RoundOutcome, usable: list[Candidate], strategy, boosting) -> RoundOutcome:
    cfg, state = boosting
    try:
        new, included, flagged, scores = strategy.aggregate(
            cfg, state, [c.node for c in usable], [c.digest for c in usable], [c.vector for c in usable],
            [int(c.samples) for c in usable])
    except LearningError as e:
        out.excluded = sorted(c.node for c in usable)
        out.abandon_reason = f"no aggregate from {len(usable)} usable update(s): {e}"
        return out
    out.flagged.update(flagged)
    out.scores = scores
    if new is None:
        out.excluded = included
        out.abandon_reason = (f"{len(included)} update(s) left after the bounds and the screen, the strategy "
                              f"needs {strategy.min_updates}")
        return out
    out.included = included
    out.state = new
    return out


def _screen_reason(scores: dict) -> str:
    if scores.get("reasons"):
        return "; ".join(str(r) for r in scores["reasons"] if not str(r).startswith("not flagged"))
    parts = []
    for k in sorted(scores):
        v = scores[k]
        if isinstance(v, float):
            parts.append(f"{k}={v:.3g}")
        elif isinstance(v, (int, str, bool)):
            parts.append(f"{k}={v}")
    return ", ".join(parts) or "excluded by screening"
