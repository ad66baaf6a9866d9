"""Signed score-histogram reports from nodes to the coordinator (for the decision threshold).

A report carries one node's per-class score histograms (:mod:`chainfl.agents.threshold`) for one
or more candidate final models of a task — aggregate counts only, never rows — and is signed with
the node's Ethereum key (EIP-191 personal message over the canonical JSON body), so the
coordinator accepts only reports from the task's nodes, whatever channel carried them.

Two channels behind one small protocol (``put(report)``, ``reports(task_id)``):

* :class:`MemoryReportBox` — in one process (``chainfl run``);
* :class:`DirectoryReportBox` — a shared directory (separate processes on one machine or a
  shared/synced folder): one file per (task, node), written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

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
    def put(self, report: NodeReport) -> None: ...

    def reports(self, task_id: int) -> list[NodeReport]: ...


class MemoryReportBox:
    """Reports kept in memory (in-process runs); an identical report is stored once."""

    def __init__(self):
        self._reports: dict[tuple[int, str, bytes], NodeReport] = {}

    def put(self, report: NodeReport) -> None:
        self._reports[(report.task_id, report.node.lower(), report.body())] = report

    def reports(self, task_id: int) -> list[NodeReport]:
        return [r for k, r in self._reports.items() if k[0] == task_id]


class DirectoryReportBox:
    """Reports as JSON files ``task-<id>/<node>-<body hash>.json`` in a shared directory."""

    def __init__(self, directory):
        self.directory = Path(directory)

    def put(self, report: NodeReport) -> None:
        folder = self.directory / f"task-{report.task_id}"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{report.node.lower()}-{hashlib.sha256(report.body()).hexdigest()[:16]}.json"
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            json.dump(report.to_dict(), f, sort_keys=True)
        os.replace(tmp, folder / name)

    def reports(self, task_id: int) -> list[NodeReport]:
        folder = self.directory / f"task-{task_id}"
        out = []
        for path in sorted(folder.glob("*.json")) if folder.exists() else []:
            try:
                out.append(NodeReport.from_dict(json.loads(path.read_text())))
            except (OSError, ValueError, AgentError) as e:
                log.warning("ignoring unreadable report %s: %s", path, e)
        return out


def histograms_for(reports, task_id: int, nodes, model_digest: str) -> list[dict]:
    """The verified histograms of ``model_digest`` (``0x`` hex), one per node of ``nodes``."""
    members = {n.lower() for n in nodes}
    chosen: dict[str, dict] = {}
    for r in reports:
        if r.task_id != task_id or r.node.lower() not in members:
            continue
        if model_digest not in r.histograms:
            continue
        if not r.verify():
            log.warning("ignoring a report for task %s claiming to be from %s: bad signature", task_id, r.node)
            continue
        chosen[r.node.lower()] = r.histograms[model_digest]
    return [chosen[k] for k in sorted(chosen)]
