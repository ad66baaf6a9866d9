"""Rendering of audit reports (pure): violations in every output, HTML self-contained and escaped."""

from __future__ import annotations

import io
import json

from rich.console import Console

from chainfl.audit.report import render_terminal, to_html, to_json
from chainfl.audit.verify import AuditReport, NodeSummary, Violation

NODE = "0x90F79bf6EB2c4f870365E785982E1f101E93b906"
CID = "bafkreigdjimvujshy3xsgifsk6unmksxi7yai253nszaac5se65etj2zbm"


def _report() -> AuditReport:
    v = Violation("aggregate-mismatch", "the aggregate does not match <its> recorded inputs", round=2,
                  node=NODE, cid=CID)
    return AuditReport(
        task_id=4, registry="0xD84379CEae14AA33C123Af12424A37803F885889", chain="http://x", store="file:///s",
        mode="federated", spec={"mode": "federated"}, violations=[v], warnings=["round 3 is still open"],
        nodes={NODE: NodeSummary(NODE, contributions=2, samples=60, flags=1, violations=1, mean_loss=0.5)},
        lineage=[{"label": "round 2 aggregate", "digest": "0x" + "ab" * 32, "cid": CID, "node": NODE,
                  "parent": None, "round": 2, "seq": None, "status": "ok"}],
        rounds=[{"round": 1, "updates": 4, "flagged": 1, "included": 3, "finalized": True, "mean_loss": 0.9,
                 "samples": 60},
                {"round": 2, "updates": 4, "flagged": 0, "included": 4, "finalized": True, "mean_loss": 0.7,
                 "samples": 60}],
        aggregates=[{"round": 2, "digest": "0x" + "ab" * 32, "cid": CID, "strategy": "fedavg", "match": False,
                     "inputs": None, "recomputed": "all verifiable updates: recomputed 0x12"}],
        flags=[{"kind": "flag", "round": 1, "seq": None, "node": NODE, "by": NODE, "reason": "norm <b>"}],
        counts={"events": 12, "from_block": 0, "to_block": 40, "blobs_fetched": 11, "bytes_fetched": 999,
                "aggregates_recomputed": 1})


def test_violation_text_names_kind_round_node_and_cid():
    (v,) = _report().violations
    assert str(v) == (f"[aggregate-mismatch] round 2, node {NODE}, CID {CID}: the aggregate does not match "
                      f"<its> recorded inputs")


def test_json_round_trips_with_the_verdict():
    data = json.loads(to_json(_report()))
    assert data["ok"] is False and data["violations"][0]["cid"] == CID
    assert data["violations"][0]["text"].startswith("[aggregate-mismatch] round 2")
    assert data["flags"][0]["reason"] == "norm <b>"


def test_terminal_lists_the_violation():
    buf = io.StringIO()
    render_terminal(_report(), Console(file=buf, width=250))
    out = buf.getvalue()
    assert "1 VIOLATION(S)" in out and CID in out and NODE in out and "MISMATCH" in out
    assert "warning: round 3 is still open" in out


def test_html_is_self_contained_and_escaped():
    page = to_html(_report())
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert "data:image/png;base64," in page
    assert "&lt;its&gt;" in page and "<its>" not in page          # text is escaped
    assert "norm &lt;b&gt;" in page
    assert "<script" not in page and "<link" not in page and "src=\"http" not in page
    assert 'class="bad"' in page                                  # the mismatching aggregate is marked
