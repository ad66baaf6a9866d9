"""Signed score-histogram reports from nodes to the coordinator (for the decision threshold).

A report carries one node's per-class score histograms (:mod:`chainfl.agents.threshold`) for one
or more candidate final models of a task — aggregate counts only, never rows — and is signed with
the node's Ethereum key (EIP-191 personal message over the canonical JSON body), so the
coordinator accepts only reports from the task's nodes, whatever channel carried them.

Two channels behind one small protocol (``put(report)``, ``reports(task_id)``):

* :class:`MemoryReportBox` — in one process (``chainfl run``);
* :class:`DirectoryReportBox` — a shared directory (separate processes on one machine or a
  shared/synced folder): one file per (task, model, node), written atomically.

Federated nodes report on every new global model (the coordinator logs each round's validation
quality from them and picks the release threshold from the final model's); chained nodes on the
candidate final models. The reports a decision used travel on as an **evidence blob**
(:func:`evidence_blob`, canonical JSON, signatures included), whose digest + CID the coordinator
records on chain when it closes the task, so an auditor recomputes the threshold from them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import stat
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Protocol

from eth_account import Account
from eth_account.messages import encode_defunct

from chainfl.agents.spec import canonical_json
from chainfl.errors import AgentError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeReport:
    """``histograms``: ``0x<model digest>`` -> threshold.score_histogram(...) of that model."""

    task_id: int
    node: str
    histograms: dict
    signature: str = ""

    def body(self) -> bytes:
        return canonical_json({"task_id": self.task_id, "node": self.node, "histograms": self.histograms})

    def signed(self, account) -> "NodeReport":
        if account.address.lower() != self.node.lower():
            raise AgentError(f"report of {self.node} cannot be signed by {account.address}")
        sig = account.sign_message(encode_defunct(self.body())).signature
        return NodeReport(self.task_id, self.node, self.histograms, "0x" + bytes(sig).hex())

    def verify(self) -> bool:
        """True if ``signature`` is ``node``'s signature of the body."""
        if not self.signature:
            return False
        try:
            signer = Account.recover_message(encode_defunct(self.body()), signature=self.signature)
        except Exception:   # malformed signature bytes: not a valid report
            return False
        return signer.lower() == self.node.lower()

    def to_dict(self) -> dict:
        return {"task_id": self.task_id, "node": self.node, "histograms": self.histograms,
                "signature": self.signature}

    @classmethod
    def from_dict(cls, d: dict) -> "NodeReport":
        try:
            return cls(int(d["task_id"]), str(d["node"]), dict(d["histograms"]), str(d.get("signature", "")))
        except (KeyError, TypeError, ValueError) as e:
            raise AgentError(f"malformed node report: {e!r}") from e


class ReportBox(Protocol):
    """Also carries peer score reports (:mod:`chainfl.agents.peerreports`): ``put_peer`` and
    ``peer_reports(task_id, round, nodes=None)``. ``nodes`` (a task's members) lets a reader
    skip what anyone else filed."""

    def put(self, report: NodeReport) -> None: ...

    def reports(self, task_id: int) -> list[NodeReport]: ...

    def reports_for(self, task_id: int, model_digest: str, nodes: Iterable[str] | None = None) -> list[NodeReport]: ...


class MemoryReportBox:
    """Reports kept in memory (in-process runs); an identical report is stored once."""

    def __init__(self):
        self._reports: dict[tuple[int, str, bytes], NodeReport] = {}
        self._peer: dict[tuple[int, int], dict[bytes, object]] = {}

    def put_peer(self, report) -> None:
        self._peer.setdefault((report.task_id, report.round), {})[report.body()] = report

    def peer_reports(self, task_id: int, round_: int, nodes: Iterable[str] | None = None) -> list:
        members = None if nodes is None else {n.lower() for n in nodes}
        return [r for r in self._peer.get((task_id, round_), {}).values()
                if members is None or r.node.lower() in members]

    def put(self, report: NodeReport) -> None:
        self._reports[(report.task_id, report.node.lower(), report.body())] = report

    def reports(self, task_id: int) -> list[NodeReport]:
        return [r for k, r in self._reports.items() if k[0] == task_id]

    def reports_for(self, task_id: int, model_digest: str, nodes: Iterable[str] | None = None) -> list[NodeReport]:
        members = None if nodes is None else {n.lower() for n in nodes}
        return [r for r in self.reports(task_id) if model_digest in r.histograms
                and (members is None or r.node.lower() in members)]


class DirectoryReportBox:
    """Reports as JSON files ``task-<id>/<model digest>-<node>-<body hash>.json`` in a shared
    directory; a report naming several models is filed under each of them (so reading the
    reports of one model reads only its own files)."""

    def __init__(self, directory):
        self.directory = Path(directory)
        self._cache: OrderedDict[tuple, dict[tuple, object]] = OrderedDict()   # (task, pattern) -> parsed files

    def put(self, report: NodeReport) -> None:
        body = hashlib.sha256(report.body()).hexdigest()[:16]
        self._write(report, [f"{model[2:18]}-{report.node.lower()}-{body}.json"
                             for model in sorted(report.histograms)[:MAX_MODELS_PER_REPORT] or ["0xnone"]])

    def put_peer(self, report) -> None:
        """A peer report as ``task-<id>/peer-<round>-<node>-<body hash>.json`` (flat: no folder
        name for anyone to squat). It supersedes the node's earlier reports of the round (a node
        re-sends when more updates arrive), which are removed: however often it re-sends, its
        newest report stays within the :data:`FILES_PER_NODE` files a reader looks at."""
        prefix = f"peer-{int(report.round)}-{report.node.lower()}-"
        name = f"{prefix}{hashlib.sha256(report.body()).hexdigest()[:16]}.json"
        self._write(report, [name])
        for old in (self.directory / f"task-{report.task_id}").glob(f"{prefix}*.json"):
            if old.name != name:
                try:
                    old.unlink()
                except OSError:               # gone already, or not ours to remove: readers cap it anyway
                    pass

    def _write(self, report, names) -> None:
        """``report`` as JSON under each of ``names`` in its task's folder, each written atomically."""
        folder = self.directory / f"task-{report.task_id}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for name in names:
                fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
                with os.fdopen(fd, "w") as f:
                    json.dump(report.to_dict(), f, sort_keys=True)
                os.replace(tmp, folder / name)
        except OSError as e:
            raise AgentError(f"cannot write the report to {folder}: {e}; pass a writable --reports "
                             f"directory") from e

    def peer_reports(self, task_id: int, round_: int, nodes: Iterable[str] | None = None) -> list:
        """The readable peer reports of a round (see :meth:`_scan`; at most :data:`PEER_FILE_CAP`
        bytes read of each file)."""
        from chainfl.agents.peerreports import PeerReport

        return self._scan(task_id, f"peer-{int(round_)}-*.json", 2, PEER_FILE_CAP, PeerReport.from_dict, nodes)

    def reports(self, task_id: int) -> list[NodeReport]:
        seen, out = set(), []
        for r in self._read(task_id, "*.json"):          # a multi-model report is filed once per model
            key = (r.node.lower(), json.dumps(r.to_dict(), sort_keys=True))
            if key not in seen:
                seen.add(key)
                out.append(r)
        return out

    def reports_for(self, task_id: int, model_digest: str, nodes: Iterable[str] | None = None) -> list[NodeReport]:
        """The reports naming ``model_digest`` (files under its prefix only: a directory written by
        a chainfl before 2026-12-02, which filed a multi-model report once, should not be reused
        for a chained task in progress)."""
        digest = model_digest[2:] if model_digest.startswith("0x") else model_digest
        return [r for r in self._read(task_id, f"{digest[:16]}-*.json", nodes) if ("0x" + digest) in r.histograms]

    def _read(self, task_id: int, pattern: str, nodes: Iterable[str] | None = None) -> list[NodeReport]:
        return self._scan(task_id, pattern, 1, 2 * REPORT_BYTES_CAP, NodeReport.from_dict, nodes)

    def _scan(self, task_id: int, pattern: str, node_field: int, cap: int, parse, nodes) -> list:
        """The reports in the files of ``pattern`` (``-``-separated names, the node's address at
        ``node_field``), read so that nobody with write access to the directory can stall or
        exhaust a reader: regular files only, at most ``cap`` bytes read of each and nesting
        checked before parsing, at most :data:`FILES_PER_NODE` files per node name (and model
        prefix: threshold reports; in name order), only names of ``nodes`` when given (a flood
        under invented names is never opened), each file parsed once while it is unchanged (name,
        size, mtime) and the parsed files of the last :data:`CACHED_PATTERNS` patterns kept —
        memory bounded by the task. (Listing the folder still costs time in its number of
        entries: a shared directory is for parties that do not flood it by the million.)"""
        folder = self.directory / f"task-{task_id}"
        members = None if nodes is None else {n.lower() for n in nodes}
        threshold_files = not pattern.startswith("peer-")
        previous = self._cache.pop((task_id, pattern), {})
        kept: dict[tuple, object] = {}
        per_node: dict[tuple[str, str], int] = {}
        out = []
        for path in sorted(folder.glob(pattern)) if folder.is_dir() else []:
            parts = path.name.split("-")
            if threshold_files and parts[0] == "peer":
                continue                          # peer reports: peer_reports()
            node = parts[node_field] if len(parts) > node_field + 1 else ""
            slot = (parts[0], node)                   # threshold reports: per model prefix and node
            if (members is not None and node not in members) or per_node.get(slot, 0) >= FILES_PER_NODE:
                continue
            per_node[slot] = per_node.get(slot, 0) + 1
            try:
                st = path.lstat()
                if not stat.S_ISREG(st.st_mode) or st.st_size > cap:
                    log.warning("ignoring report %s: not a regular file of at most %s bytes", path, cap)
                    continue
                key = (path.name, st.st_size, st.st_mtime_ns)
                if key not in previous:
                    with open(path, "rb") as f:
                        text = f.read(cap + 1).decode("utf-8")
                    previous[key] = parse(shallow_json(text))
                kept[key] = previous[key]
                out.append(kept[key])
            except (OSError, ValueError, AgentError, MemoryError, RecursionError) as e:
                log.warning("ignoring unreadable report %s: %s", path, type(e).__name__)
        self._cache[(task_id, pattern)] = kept
        while len(self._cache) > CACHED_PATTERNS:
            self._cache.popitem(last=False)
        return out


def verified_reports(reports, task_id: int, nodes, model_digest: str) -> list[NodeReport]:
    """One verified report on ``model_digest`` (``0x`` hex) per node of ``nodes`` (sorted by node).

    A report counts only if its body can be written (canonical JSON), it is at most
    :data:`REPORT_BYTES_CAP` bytes and names at most :data:`MAX_MODELS_PER_REPORT` models, its
    histogram of this model is well formed (:func:`~chainfl.agents.threshold.valid_histogram`:
    the shared binning, non-negative integer counts) and its signature is the node's. A node that
    signed several such reports on one model gets the one whose body hashes lowest: the same
    choice whatever order a channel or an evidence blob lists them in."""
    from chainfl.agents.threshold import valid_histogram

    members = {n.lower() for n in nodes}
    chosen: dict[str, tuple[bytes, NodeReport]] = {}
    for r in reports:
        if r.task_id != task_id or r.node.lower() not in members or model_digest not in r.histograms:
            continue
        try:
            body = r.body()
        except Exception:           # NaN, non-JSON values: not a report anyone could have signed
            log.warning("ignoring a report for task %s claiming to be from %s: not canonical JSON", task_id, r.node)
            continue
        if len(r.histograms) > MAX_MODELS_PER_REPORT or len(body) > REPORT_BYTES_CAP:
            log.warning("ignoring a report for task %s from %s: %s model(s) in %s bytes exceed what a report "
                        "holds", task_id, r.node, len(r.histograms), len(body))
            continue
        if not valid_histogram(r.histograms[model_digest]):
            log.warning("ignoring a report for task %s from %s: its histogram of %s is malformed", task_id, r.node,
                        model_digest[:12])
            continue
        if not r.verify():
            log.warning("ignoring a report for task %s claiming to be from %s: bad signature", task_id, r.node)
            continue
        key, rank = r.node.lower(), hashlib.sha256(body).digest()
        if key not in chosen or rank < chosen[key][0]:
            chosen[key] = (rank, r)
    return [chosen[k][1] for k in sorted(chosen)]


#: ``spec.limits[REPORT_ROWS] == "committed"``: the task's reports may count no more rows than their
#: nodes' committed training rows (written by build_spec since this rule exists; older specs lack it
#: and keep the rules they were recorded under).
REPORT_ROWS = "report_rows"


def strict_reports(spec) -> bool:
    """True if ``spec`` was recorded under the report rules of this version (row bound, well-formed
    histograms, size cap in the evidence)."""
    return spec is not None and spec.limits.get(REPORT_ROWS) == "committed"


def within_commitment(report: NodeReport, model_digest: str, spec) -> bool:
    """True if ``report``'s histogram of ``model_digest`` counts no more rows than the training
    rows its node committed in its signed statistics (``spec.node_samples``; no commitment, or a
    spec recorded before this rule: True). A node's validation slice is at most as large as its
    training rows (``--val-fraction`` <= 0.5), so this holds for every honest report and bounds a
    liar's weight in the summed threshold histogram by the row count it committed (its own,
    unproven claim)."""
    if not strict_reports(spec):
        return True
    committed = spec.committed_samples(report.node)
    h = report.histograms[model_digest]
    return committed is None or sum(h["pos"]) + sum(h["neg"]) <= committed


def threshold_reports(reports, task_id: int, spec, model_digest: str) -> list[NodeReport]:
    """The reports the release threshold is computed from: :func:`verified_reports` of the task's
    nodes that are :func:`within_commitment`."""
    out = []
    for r in verified_reports(reports, task_id, spec.nodes, model_digest):
        if within_commitment(r, model_digest, spec):
            out.append(r)
        else:
            h = r.histograms[model_digest]
            log.warning("task %s: ignoring %s's validation histogram: it counts %s rows, more than the %s training "
                        "rows it committed", task_id, r.node, sum(h["pos"]) + sum(h["neg"]),
                        spec.committed_samples(r.node))
    return out


def histograms_for(reports, task_id: int, nodes, model_digest: str) -> list[dict]:
    """The verified histograms of ``model_digest`` (``0x`` hex), one per node of ``nodes``."""
    return [r.histograms[model_digest] for r in verified_reports(reports, task_id, nodes, model_digest)]


EVIDENCE_KIND = "reports"
#: Bytes one signed report may take (~1.2 kB per model measured: two lists of 242 counts, the
#: signature, the addresses), with room for the few models a report names.
REPORT_BYTES_CAP = 16 * 1024
#: Bytes of a peer report file read at all (a report is capped by its task's size, see
#: peerreports.report_cap: 4 kB + 512 B per node, 266 kB at 512 nodes).
PEER_FILE_CAP = 512 * 1024
#: Report files read per node name and round (peer reports: a node re-sends when more updates
#: arrive) or per node name and model (threshold reports).
FILES_PER_NODE = 8
#: Patterns (a round's peer reports, a model's threshold reports) whose parsed files a
#: directory box keeps.
CACHED_PATTERNS = 4
#: Nesting a report or evidence blob may have (they need 4: body, scores, a row).
MAX_JSON_DEPTH = 8


def shallow_json(text: str):
    """``json.loads`` of ``text`` after checking its nesting is at most :data:`MAX_JSON_DEPTH`
    (deeply nested input crashes the parser's C stack: the recursion limit is raised by a
    dependency). ValueError if too deep or not JSON."""
    depth = 0
    for ch in _BRACKET.findall(_STRING.sub('""', text)):
        depth += 1 if ch in "[{" else -1
        if depth > MAX_JSON_DEPTH:
            raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH}")
    return json.loads(text)


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKET = re.compile(r"[\[\]{}]")
#: Models one report may name (nodes name one; chained nodes at most the head and the accepted model).
MAX_MODELS_PER_REPORT = 4


def evidence_cap(spec) -> int:
    """The largest evidence blob a task can need: the threshold reports (one per node) and, with
    early stopping, one report per node for each of ``2 x patience`` models, each report at most
    :data:`REPORT_BYTES_CAP` (larger ones are never used) — bounded by the task's size."""
    models = 1 + (2 * int(spec.stopping.get("patience", 5)) if spec is not None and spec.stopping else 0)
    nodes = len(spec.nodes) if spec is not None else 0
    return 4 * 2**20 + REPORT_BYTES_CAP * nodes * models


def evidence_blob(task_id: int, model_digest: str, reports: list[NodeReport], stopping: dict | None = None) -> bytes:
    """Canonical JSON of the signed reports a decision on ``model_digest`` used (each report cut
    down to that model's histogram would break its signature, so reports travel whole).

    ``stopping`` (an early stop, :mod:`chainfl.agents.stopping`): ``{"rule", "rounds", "models",
    "reports"}`` — the reports of the models the stop decision read, kept apart from the threshold
    reports."""
    body = {"kind": EVIDENCE_KIND, "task": int(task_id), "model": model_digest,
            "reports": [r.to_dict() for r in sorted(reports, key=lambda r: r.node.lower())]}
    if stopping is not None:
        body["stopping"] = {**{k: v for k, v in stopping.items() if k != "reports"},
                            "reports": [r.to_dict() for r in sorted(stopping["reports"],
                                                                    key=lambda r: (r.node.lower(), r.body()))]}
    return canonical_json(body)


def parse_stopping(blob: bytes) -> tuple[dict, list[NodeReport]] | None:
    """The stopping section of an evidence blob and its reports (None: the task was not stopped
    early); AgentError if malformed."""
    try:
        d = shallow_json(blob.decode("utf-8"))
        section = d.get("stopping")
        if section is None:
            return None
        return dict(section), [NodeReport.from_dict(r) for r in section["reports"]]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise AgentError(f"the stopping evidence is malformed: {e}") from e


def parse_evidence(blob: bytes) -> tuple[int, str, list[NodeReport]]:
    """``(task_id, model_digest, reports)`` of an evidence blob; AgentError if malformed."""
    try:
        d = shallow_json(blob.decode("utf-8"))
        if d.get("kind") != EVIDENCE_KIND:
            raise ValueError(f"kind {d.get('kind')!r}")
        return int(d["task"]), str(d["model"]), [NodeReport.from_dict(r) for r in d["reports"]]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise AgentError(f"not a chainfl evidence blob: {e}") from e
