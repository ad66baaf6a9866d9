"""Peer validation on chain: signed score reports on a round's candidate updates, and the evidence.

A federated network task whose spec carries ``peer`` settings ends each round in two steps. Once
the round is ready to end (its quorum submitted, or its deadline passed), every node of the task
fetches every other node's update (verified against the digest on chain), scores each one on its
own validation rows against the round's global model (:func:`chainfl.aggregation.peer.score_candidates`:
gains in ROC-AUC and in per-class log-loss — aggregate numbers, never rows) and sends a
:class:`PeerReport` signed with its Ethereum key. The coordinator waits for every node's report,
or for ``peer.seconds`` of chain time after the round became ready, and then decides: the same
pure :func:`chainfl.aggregation.decision.decide_round` leaves out (``excluded``, without blame)
the candidates whose median peer score is clearly negative. The reports it used are stored as the
round's **evidence blob** (canonical JSON, signatures included) and named in ``finalizeRound`` /
``abandonRound``, so an auditor re-decides the round from exactly those reports.

What a lying reporter can do: any numbers it signs are one value among the medians, so a
minority moves a candidate's statistic only as far as the honest reporters' quantiles reach.
What it cannot do: report for another node (signatures), for another round or global model (the
body names them), count more validation rows than the training rows it committed
(:func:`row_problem`), or send non-finite or out-of-range values (the whole report is left out).
A node that sends several reports gets the one covering the most candidates (ties: the lowest
body hash) — the same choice whatever order a channel or the evidence lists them in.

Peer exclusions carry no blame on chain: under label skew an honest node's model is often worse
on its peers' rows for a few rounds (measured: ``benchmarks/results/peer_onchain.md``), so a low
peer score is a reason to leave an update out, not proof of malice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from dataclasses import dataclass

from eth_account import Account
from eth_account.messages import encode_defunct

from chainfl.agents.spec import canonical_json
from chainfl.aggregation.peer import REPORT_FIELDS, PeerConfig
from chainfl.errors import AgentError, ConfigError

log = logging.getLogger(__name__)

REPORT_KIND = "peer-report"
EVIDENCE_KIND = "peer-evidence"
#: Chain seconds the coordinator waits for peer reports after a round is ready to end (default).
DEFAULT_PEER_SECONDS = 120
#: Bytes one report may take per candidate it scores (six numbers and a digest: ~190 B measured).
BYTES_PER_CANDIDATE = 512
#: Largest |mean log-loss gain| an honest report can hold: log-odds are clipped to [-50, 50], so a
#: row's log-loss lies in [0, 50 + log 2] and a difference of two means within ±(50 + log 2).
MAX_LOSS_GAIN = 51.0
#: A candidate key: ``0x`` and the 32-byte digest in lower-case hex (as nodes write it).
DIGEST_KEY = re.compile(r"0x[0-9a-f]{64}")


def peer_settings(spec) -> tuple[PeerConfig, int] | None:
    """``(decision config, seconds to wait for reports)`` of a spec with peer validation, else None."""
    if spec is None or not getattr(spec, "peer", None):
        return None
    d = dict(spec.peer)
    seconds = int(d.pop("seconds", DEFAULT_PEER_SECONDS))
    return PeerConfig.from_dict(d), seconds


def peer_spec(settings: dict | None) -> dict:
    """The ``peer`` field of a spec from user settings (PeerConfig fields and ``seconds`` over the
    defaults: per-class loss gain, tolerance 3 — what measured best offline); {} = off."""
    if settings is None:
        return {}
    d = {**PeerConfig(metric="loss", tolerance=3.0).to_dict(), "seconds": DEFAULT_PEER_SECONDS, **dict(settings)}
    seconds = d.pop("seconds")
    if not isinstance(seconds, int) or isinstance(seconds, bool) or seconds < 1:
        raise ConfigError(f"peer seconds must be a positive whole number of seconds, got {seconds!r}")
    try:
        cfg = PeerConfig.from_dict(d)
    except TypeError as e:
        raise ConfigError(f"unknown peer-validation setting: {e}") from e
    return {**cfg.to_dict(), "seconds": seconds}


@dataclass(frozen=True)
class PeerReport:
    """One node's scores of round ``round``'s candidates (``scores``: ``0x<candidate digest>`` ->
    the :data:`~chainfl.aggregation.peer.REPORT_FIELDS` row) against global model ``base``."""

    task_id: int
    round: int
    base: str
    node: str
    scores: dict
    signature: str = ""

    def body(self) -> bytes:
        return canonical_json({"kind": REPORT_KIND, "task_id": self.task_id, "round": self.round,
                               "base": self.base, "node": self.node, "scores": self.scores})

    def signed(self, account) -> "PeerReport":
        if account.address.lower() != self.node.lower():
            raise AgentError(f"peer report of {self.node} cannot be signed by {account.address}")
        sig = account.sign_message(encode_defunct(self.body())).signature
        return PeerReport(self.task_id, self.round, self.base, self.node, self.scores, "0x" + bytes(sig).hex())

    def verify(self) -> bool:
        if not self.signature:
            return False
        try:
            signer = Account.recover_message(encode_defunct(self.body()), signature=self.signature)
        except Exception:   # malformed signature bytes
            return False
        return signer.lower() == self.node.lower()

    def to_dict(self) -> dict:
        return {"kind": REPORT_KIND, "task_id": self.task_id, "round": self.round, "base": self.base,
                "node": self.node, "scores": self.scores, "signature": self.signature}

    @classmethod
    def from_dict(cls, d: dict) -> "PeerReport":
        try:
            if d.get("kind") != REPORT_KIND:
                raise ValueError(f"kind {d.get('kind')!r}")
            return cls(int(d["task_id"]), int(d["round"]), str(d["base"]), str(d["node"]), dict(d["scores"]),
                       str(d.get("signature", "")))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise AgentError(f"malformed peer report: {e!r}") from e


def row_problem(row, committed: int | None) -> str | None:
    """Why one scores row cannot be an honest report (None if it can): six finite numbers, an AUC
    gain in [-1, 1], ``has_auc`` 0 or 1 (1 only with both classes), class counts that are
    non-negative whole numbers summing to at most the reporter's committed training rows."""
    if not isinstance(row, (list, tuple)) or len(row) != len(REPORT_FIELDS):
        return f"a row needs {len(REPORT_FIELDS)} numbers ({', '.join(REPORT_FIELDS)})"
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in row):
        return "a row holds a non-numeric value"
    try:
        row = [float(v) for v in row]          # (an int too large for a float raises here)
    except OverflowError:
        return "a row holds a number too large for a float"
    if not all(math.isfinite(v) for v in row):
        return "a row holds a non-finite value"
    auc, has_auc, pos_gain, n_pos, neg_gain, n_neg = row
    if not -1.0 <= auc <= 1.0 or has_auc not in (0, 1):
        return "an AUC gain outside [-1, 1] or has_auc not 0/1"
    if abs(pos_gain) > MAX_LOSS_GAIN or abs(neg_gain) > MAX_LOSS_GAIN:
        return f"a log-loss gain beyond ±{MAX_LOSS_GAIN} (scores are log-odds clipped to ±50)"
    if n_pos < 0 or n_neg < 0 or n_pos != int(n_pos) or n_neg != int(n_neg):
        return "class counts must be non-negative whole numbers"
    if has_auc == 1 and (n_pos == 0 or n_neg == 0):
        return "an AUC needs rows of both classes"
    if committed is not None and n_pos + n_neg > committed:
        return f"counts {int(n_pos + n_neg)} validation rows, more than the {committed} training rows it committed"
    return None


def report_cap(spec) -> int:
    return 4096 + BYTES_PER_CANDIDATE * len(spec.nodes)


def evidence_cap(spec) -> int:
    """The largest peer evidence blob a round can need: one report per node, each at most
    :func:`report_cap` (larger ones are never used)."""
    return 4096 + report_cap(spec) * len(spec.nodes)


def verified_peer_reports(reports, spec, task_id: int, round_: int, base: str) -> list[PeerReport]:
    """One valid report per task node on round ``round_`` with global model ``base`` (``0x`` hex),
    sorted by node: signed by its node, at most :func:`report_cap` bytes, every row valid
    (:func:`row_problem`); of several, the one scoring the most candidates, then the lowest body hash."""
    members = {n.lower() for n in spec.nodes}
    cap = report_cap(spec)
    chosen: dict[str, tuple[tuple, PeerReport]] = {}
    for r in reports:
        if r.task_id != task_id or r.round != round_ or r.base.lower() != base.lower() \
                or r.node.lower() not in members:
            continue
        try:
            body = r.body()
            problem = "more bytes than a report holds" if len(body) > cap else None
            if problem is None and not r.verify():
                problem = "bad signature"
            if problem is None:
                committed = spec.committed_samples(r.node)
                for key, row in r.scores.items():
                    if not (isinstance(key, str) and DIGEST_KEY.fullmatch(key)):
                        problem = f"candidate key {str(key)[:20]!r} is not a 0x digest in lower-case hex"
                    else:
                        problem = row_problem(row, committed)
                    if problem:
                        break
        except Exception as e:     # whatever a crafted report holds, it is left out, never raised
            problem = f"unreadable ({type(e).__name__})"
        if problem:
            log.warning("task %s round %s: ignoring %s's peer report: %s", task_id, round_, r.node, problem)
            continue
        key, rank = r.node.lower(), (-len(r.scores), hashlib.sha256(body).digest())
        if key not in chosen or rank < chosen[key][0]:
            chosen[key] = (rank, r)
    return [chosen[k][1] for k in sorted(chosen)]


def peer_inputs(reports: list[PeerReport]) -> dict[str, dict[str, tuple]]:
    """What :func:`~chainfl.aggregation.decision.decide_round` reads: reporter (lower case) ->
    candidate digest (``0x`` hex, lower case) -> scores row."""
    return {r.node.lower(): {k: tuple(float(v) for v in row) for k, row in r.scores.items()} for r in reports}


def evidence_blob(task_id: int, round_: int, base: str, cfg: dict, reports: list[PeerReport]) -> bytes:
    """Canonical JSON of the peer reports a round's decision used (whole, signatures included)."""
    return canonical_json({"kind": EVIDENCE_KIND, "task": int(task_id), "round": int(round_), "base": base,
                           "peer": dict(cfg),
                           "reports": [r.to_dict() for r in sorted(reports, key=lambda r: r.node.lower())]})


def parse_evidence(blob: bytes) -> tuple[int, int, str, list[PeerReport]]:
    """``(task_id, round, base, reports)`` of a peer evidence blob; AgentError if malformed."""
    from chainfl.agents.reports import shallow_json

    try:
        d = shallow_json(blob.decode("utf-8"))
        if d.get("kind") != EVIDENCE_KIND:
            raise ValueError(f"kind {d.get('kind')!r}")
        return int(d["task"]), int(d["round"]), str(d["base"]), [PeerReport.from_dict(r) for r in d["reports"]]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError, AgentError) as e:
        raise AgentError(f"not a chainfl peer evidence blob: {e}") from e
