"""Render an :class:`~chainfl.audit.verify.AuditReport`: terminal tables (rich), JSON, and one
self-contained HTML file (lineage, per-round metrics plot as an inline PNG, flags, violations).

Pure rendering: nothing here reads the chain or the store.
"""

from __future__ import annotations

import base64
import html
import io
import json

from chainfl.audit.verify import AuditReport

__all__ = ["render_terminal", "to_json", "to_html", "metrics_plot_png"]


def _short(value: str | None, n: int = 10) -> str:
    if not value:
        return "-"
    return value if len(value) <= 2 * n + 1 else f"{value[:n]}…{value[-4:]}"


def _loss(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def render_terminal(report: AuditReport, console=None) -> None:
    """Print the verdict, the violations, the per-round metrics and the per-node summary."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    verdict = "[bold green]OK[/]" if report.ok else f"[bold red]{len(report.violations)} VIOLATION(S)[/]"
    if report.violations and report.violations[0].kind == "store-missing":
        verdict = "[bold red]UNVERIFIABLE with this store[/]"
    bad = report.misbehaving()
    if bad:
        verdict += f" — {len(report.findings)} handled misbehaviour finding(s) by {len(bad)} node(s)"
    c = report.counts
    console.print(f"Audit of task {report.task_id} ({report.mode}) at registry {report.registry}: {verdict}")
    console.print(f"  {c.get('events', 0)} events, blocks {c.get('from_block')}..{c.get('to_block')}; "
                  f"{c.get('blobs_fetched', 0)} blobs verified ({c.get('bytes_fetched', 0)} bytes); "
                  f"{c.get('aggregates_recomputed', 0)}/{len(report.aggregates)} aggregates recomputed "
                  f"bit-identically; {report.seconds:.2f} s")
    if report.violations:
        t = Table(title="Violations", title_style="bold red")
        for col in ("kind", "seq", "round", "node", "CID", "what broke"):
            t.add_column(col, overflow="fold")
        for v in report.violations:
            t.add_row(v.kind, str(v.seq or "-"), str(v.round or "-"), v.node or "-", v.cid or "-", v.message)
        console.print(t)
    for w in report.warnings:
        console.print(f"[yellow]warning:[/] {w}")
    if bad:
        t = Table(title="Handled misbehaviour (flagged, rejected, skipped: the protocol dealt with it)")
        t.add_column("node", no_wrap=True, min_width=42)
        t.add_column("what", overflow="fold")
        for node, kinds in bad.items():
            t.add_row(node, ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items())))
        console.print(t)
    if report.closed:
        console.print(f"Closed by {report.closed['by']}: {report.closed.get('reason') or '(no reason recorded)'}")
    if report.rounds:
        t = Table(title="Per round")
        if report.mode == "chained":
            for col in ("round", "handoffs", "mean loss", "min", "max"):
                t.add_column(col, justify="right")
            for r in report.rounds:
                t.add_row(str(r["round"]), str(r["handoffs"]), _loss(r["mean_loss"]), _loss(r["min_loss"]),
                          _loss(r["max_loss"]))
        else:
            for col in ("round", "updates", "flagged", "included", "excluded", "samples", "mean loss", "decision"):
                t.add_column(col, justify="right")
            agg = {a["round"]: a for a in report.aggregates}
            for r in report.rounds:
                a = agg.get(r["round"])
                ended = r["finalized"] or r.get("abandoned")
                status = "open" if not ended else ("recomputed" if a and a["match"] else "MISMATCH")
                if r.get("abandoned"):
                    status = f"abandoned, {status}"
                t.add_row(str(r["round"]), str(r["updates"]), str(r["flagged"]), str(r["included"]),
                          str(r.get("excluded", 0)), str(r["samples"]), _loss(r["mean_loss"]), status)
        console.print(t)
    if report.nodes:
        t = Table(title="Per node")
        cols = ["node", "contributions", "samples", "mean loss"]
        cols += ["included", "flags"] if report.mode == "federated" else ["rejected others", "rejected by next",
                                                                          "skipped"]
        cols.append("violations")
        for col in cols:
            if col == "node":
                t.add_column(col, no_wrap=True, min_width=42)
            else:
                t.add_column(col, justify="right")
        for n in report.nodes.values():
            row = [n.address, str(n.contributions), str(n.samples), _loss(n.mean_loss)]
            row += ([str(n.included), str(n.flags)] if report.mode == "federated"
                    else [str(n.rejections_issued), str(n.rejections_received), str(n.skipped)])
            row.append(str(n.violations))
            t.add_row(*row)
        console.print(t)
    if report.flags:
        t = Table(title="Flags and rejections")
        for col in ("kind", "seq", "round", "node", "by", "reason"):
            t.add_column(col, overflow="fold")
        for f in report.flags:
            t.add_row(f["kind"], str(f["seq"] or "-"), str(f["round"] or "-"), f["node"], f["by"], f["reason"])
        console.print(t)
    if report.release:
        r = report.release
        console.print(f"Release {r['cid']} ({_short(r['digest'])}): {r['status']}"
                      + (f", equals the final {r['matches_final']} model" if r.get("matches_final") else ""))
        if r.get("threshold_recomputed") is not None:
            console.print(f"Threshold {r['threshold_recomputed']:.4f} recomputed from {r.get('evidence_reports', 0)} "
                          f"signed node report(s)")
        if r.get("stopping"):
            st = r["stopping"]
            console.print(f"Early stop re-decided from the signed reports of rounds {st['rounds'][0]}-"
                          f"{st['rounds'][-1]}: {st['reason']}")


def to_json(report: AuditReport) -> str:
    return json.dumps(report.to_dict(), indent=2, sort_keys=True, default=str)


def metrics_plot_png(report: AuditReport) -> bytes | None:
    """Loss per handoff (chained) or per round (federated), with flags/rejections marked; PNG bytes."""
    if not report.rounds:
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(7.5, 3.2), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    rounds = [r["round"] for r in report.rounds]
    losses = [r["mean_loss"] if r["mean_loss"] is not None else float("nan") for r in report.rounds]
    ax.plot(rounds, losses, marker="o", label="mean training loss")
    handles, labels = [], []
    if report.mode == "chained":
        lo = [r["min_loss"] for r in report.rounds]
        hi = [r["max_loss"] for r in report.rounds]
        ax.fill_between(rounds, lo, hi, alpha=0.2, label="min–max over handoffs")
    else:
        ax2 = ax.twinx()
        ax2.bar(rounds, [r["flagged"] for r in report.rounds], width=0.4, alpha=0.3, color="tab:red",
                label="flagged updates")
        ax2.set_ylabel("flagged updates")
        ax2.set_ylim(0, max(1, max(r["updates"] for r in report.rounds)))
        ax2.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_zorder(ax2.get_zorder() + 1)          # the loss line above the bars
        ax.patch.set_visible(False)
        handles, labels = ax2.get_legend_handles_labels()
    bad = sorted({v.round for v in report.violations if v.round is not None})
    for r in bad:
        ax.axvline(r, color="red", linestyle="--", alpha=0.6)
    ax.set_xlabel("round")
    ax.set_ylabel("loss")
    ax.set_title(f"task {report.task_id}: per-round metrics" + (" (red: violations)" if bad else ""))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    own_handles, own_labels = ax.get_legend_handles_labels()
    ax.legend(own_handles + handles, own_labels + labels, loc="upper right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f0f0f0} .ok{color:#186a1b} .bad{color:#b00020;font-weight:bold}
tr.bad td{background:#fde8ea} tr.rejected td{background:#fff4d6} code{font-size:12px}
"""


def _table(headers: list[str], rows: list[list], classes: list[str] | None = None) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr>"]
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def to_html(report: AuditReport) -> str:
    """One self-contained HTML page (no external files, scripts or fonts)."""
    e = html.escape
    c = report.counts
    verdict = ('<span class="ok">OK — the history verifies</span>' if report.ok else
               f'<span class="bad">{len(report.violations)} violation(s)</span>')
    bad = report.misbehaving()
    if bad:
        verdict += f" — {len(report.findings)} handled misbehaviour finding(s) by {len(bad)} node(s)"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>chainfl audit: task "
             f"{report.task_id}</title><style>{_CSS}</style></head><body>",
             f"<h1>Audit of task {report.task_id} ({e(report.mode)})</h1>",
             f"<p>{verdict}</p>",
             f"<p>Registry <code>{e(report.registry)}</code> on <code>{e(report.chain)}</code>, store "
             f"<code>{e(report.store)}</code>. {c.get('events', 0)} events in blocks {c.get('from_block')}.."
             f"{c.get('to_block')}; {c.get('blobs_fetched', 0)} blobs fetched and verified against their "
             f"on-chain digests; {c.get('aggregates_recomputed', 0)} of {len(report.aggregates)} aggregates "
             f"recomputed bit-identically; {report.seconds:.2f} s.</p>"]
    if report.violations:
        parts.append("<h2>Violations</h2>")
        parts.append(_table(["kind", "seq", "round", "node", "CID", "what broke"],
                            [[v.kind, v.seq or "-", v.round or "-", v.node or "-", v.cid or "-", v.message]
                             for v in report.violations]))
    if report.warnings:
        parts.append("<h2>Warnings</h2><ul>" + "".join(f"<li>{e(w)}</li>" for w in report.warnings) + "</ul>")
    if report.closed:
        parts.append(f"<p>Closed by <code>{e(report.closed['by'])}</code>: "
                     f"{e(report.closed.get('reason') or '(no reason recorded)')}</p>")
    if report.findings:
        parts.append("<h2>Handled misbehaviour</h2><p>Flagged updates, rejected handoffs, skipped turns and "
                     "abandoned rounds: the protocol dealt with them; they do not fail the audit.</p>")
        parts.append(_table(["kind", "node", "seq", "round", "what"],
                            [[f.kind, f.node or "-", f.seq or "-", f.round or "-", f.message] for f in report.findings]))
    png = metrics_plot_png(report)
    if png:
        parts.append("<h2>Per-round metrics</h2>")
        parts.append(f'<img alt="per-round metrics" src="data:image/png;base64,{base64.b64encode(png).decode()}">')
        keys = list(report.rounds[0])
        parts.append(_table(keys, [[r.get(k) if not isinstance(r.get(k), float) else f"{r[k]:.5f}"
                                    for k in keys] for r in report.rounds]))
    if report.nodes:
        parts.append("<h2>Nodes</h2>")
        fields = list(next(iter(report.nodes.values())).to_dict())
        parts.append(_table(fields, [[("-" if v is None else f"{v:.4f}" if isinstance(v, float) else v)
                                      for v in n.to_dict().values()] for n in report.nodes.values()],
                            ["bad" if n.violations else "" for n in report.nodes.values()]))
    if report.flags:
        parts.append("<h2>Flags and rejections</h2>")
        parts.append(_table(["kind", "seq", "round", "node", "by", "reason"],
                            [[f["kind"], f["seq"] or "-", f["round"] or "-", f["node"], f["by"], f["reason"]]
                             for f in report.flags]))
    if report.aggregates:
        parts.append("<h2>Aggregates recomputed</h2>")
        parts.append(_table(["round", "strategy", "recorded digest", "CID", "inputs", "recomputed", "match"],
                            [[a["round"], a["strategy"], a["digest"], a["cid"], a["inputs"], a["recomputed"],
                              a["match"]] for a in report.aggregates],
                            ["" if a["match"] else "bad" for a in report.aggregates]))
    parts.append("<h2>Lineage</h2><p>Every model recorded on chain, in chain order; status is the "
                 "result of fetching it by CID and checking its sha256 against the digest on chain.</p>")
    parts.append(_table(["model", "seq", "round", "node", "digest", "CID", "parent", "status"],
                        [[x["label"], x.get("seq") or "-", x.get("round") or "-", x.get("node") or "-",
                          _short(x["digest"]), x.get("cid") or "-", _short(x.get("parent")),
                          x["status"] + (f" ({x['reason']})" if x.get("reason") else "")]
                         for x in report.lineage],
                        ["rejected" if x["status"] == "rejected" else "" if x["status"] == "ok" else "bad"
                         for x in report.lineage]))
    if report.release:
        r = report.release
        parts.append("<h2>Release</h2>")
        parts.append(_table(["digest", "CID", "status", "equals final model", "meta"],
                            [[r["digest"], r["cid"], r["status"], r.get("matches_final"),
                              json.dumps(r.get("meta"), sort_keys=True)]]))
        if r.get("threshold_recomputed") is not None:
            parts.append(f"<p>Threshold {r['threshold_recomputed']:.4f} recomputed from "
                         f"{r.get('evidence_reports', 0)} signed node report(s)</p>")
        if r.get("stopping"):
            parts.append(f"<p>Early stop re-decided from the signed reports: {e(r['stopping']['reason'])}</p>")
    if report.spec:
        parts.append("<h2>Task spec</h2><pre>" + e(json.dumps(report.spec, indent=2, sort_keys=True)) + "</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)
