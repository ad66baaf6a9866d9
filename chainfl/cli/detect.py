"""``chainfl detect``: score the accounts of a chain with a task's audited release.

``--rpc`` (``CHAINFL_RPC``) is the chain where the registry and the task live, as for every other
command; ``--scan-rpc`` is the chain whose accounts are scored (default: the same one). Neither
needs an archive node.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import click

from chainfl.cli._common import echo_json, json_option, resolve_rpc, resolve_store, store_option
from chainfl.cli.audit import registry_option, resolve_registry


@click.command("detect")
@click.option("--task", "task_id", type=int, required=True, help="Task whose release scores the accounts.")
@click.option("--rpc", envvar="CHAINFL_RPC", default=None, show_envvar=True,
              help="Chain where the registry and the task live: eth-tester:// (embedded, default) or "
                   "http://host:port.")
@click.option("--registry-rpc", default=None, hidden=True, help="Old name of --rpc.")
@click.option("--scan-rpc", default=None,
              help="Chain whose accounts are scored (default: the --rpc chain). An ordinary node will do: "
                   "no archive state is read.")
@store_option
@registry_option
@click.option("--from-block", type=int, default=0, show_default=True, help="First block to read.")
@click.option("--to-block", type=int, default=None, help="Last block to read (default: latest).")
@click.option("--addresses", "addresses_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Score only these accounts: a CSV with an 'address' column, or one address per line.")
@click.option("-o", "--out", "--output", "out", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write the ranked accounts here (.csv; .json for the summary with every account).")
@click.option("--labels", "labels_path", type=click.Path(exists=True), default=None,
              help="Known true labels (CSV with address,label; a saved simulation directory; or JSON): a "
                   "'label' column in the output, and precision/recall/F1 at the threshold and of the alerts.")
@click.option("--top", type=click.IntRange(min=0), default=None,
              help="Flag at most the N highest-scoring accounts (of those at or above the threshold).")
@click.option("--budget", type=float, default=None,
              help="Alert budget: flag at most this share of the scored accounts, highest scores first "
                   "(e.g. 0.01 = 1 %).")
@click.option("--explain", type=click.IntRange(min=0), default=3, show_default=True,
              help="Features reported per account (largest positive contributions).")
@click.option("--no-audit", is_flag=True, help="Skip the history audit (the release is still verified).")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Seconds to wait for each blob.")
@json_option
@click.pass_context
def detect_cmd(ctx, task_id: int, rpc: str | None, registry_rpc: str | None, scan_rpc: str | None, store: str | None,
               registry_address: str | None, from_block: int, to_block: int | None, addresses_path: str | None,
               out: str | None, labels_path: str | None, top: int | None, budget: float | None, explain: int,
               no_audit: bool, timeout: float, as_json: bool) -> None:
    """Audit task TASK, take its release (refused if anything fails verification or if it reads
    features a chain cannot give), extract account features from blocks FROM..TO of the --scan-rpc
    chain, and rank the accounts by fraud score. Flags accounts at the release threshold, at most
    --top N / --budget FRACTION of them; warns when the inputs lie far outside the training data."""
    from chainfl.audit.detect import (alert_cap, detect_result, load_release, read_addresses, read_labels,
                                      require_chain_computable, score_chain, write_csv, write_json)
    from chainfl.chain import connect
    from chainfl.storage import open_store

    from_env = ctx.get_parameter_source("rpc") == click.core.ParameterSource.ENVIRONMENT
    if registry_rpc and rpc and registry_rpc != rpc and not from_env:
        raise click.UsageError(f"--registry-rpc is the old name of --rpc (the registry's chain) and both are "
                               f"given, differently ({registry_rpc} vs {rpc}); the chain to score is now "
                               f"--scan-rpc: pass --rpc {registry_rpc} --scan-rpc {rpc}")
    home_url = resolve_rpc(registry_rpc or rpc)
    scan_url = scan_rpc or home_url
    alert_cap(0, top, budget)                      # bad --top/--budget fail before any chain work
    labels = read_labels(labels_path) if labels_path else None
    addresses = read_addresses(addresses_path) if addresses_path else None
    with contextlib.ExitStack() as stack:
        home = stack.enter_context(connect(home_url, must_exist=True))
        registry = resolve_registry(home, registry_address)
        release, _ = load_release(home, registry, open_store(resolve_store(store)), task_id,
                                  audit=not no_audit, timeout=timeout)
        require_chain_computable(release)
        target = home if scan_url == home_url else stack.enter_context(connect(scan_url, must_exist=True))
        scored = score_chain(release, target.w3, from_block, to_block, addresses=addresses, top=top,
                             budget=budget, progress=not as_json)
    metrics = scored.metrics(labels) if labels is not None else None
    chains = {"registry": home_url, "scanned": scan_url}
    if out:
        (write_json(scored, out, release, metrics, explain, labels, chains=chains, output=out)
         if Path(out).suffix.lower() == ".json" else write_csv(scored, out, explain, labels))
    result = detect_result(scored, release, metrics, explain, labels, chains=chains, output=out)
    _warn(result, addresses)
    if as_json:
        echo_json(result)
        return
    _print(result, out)


def _warn(result: dict, addresses: list[str] | None) -> None:
    """Warnings on stderr (also under --json, where the same facts are fields of the result)."""
    ood = result["out_of_distribution"]
    if ood and ood["warning"]:
        click.echo(f"warning: {ood['message']}", err=True)
    missing = result["not_scored"]
    if addresses is not None:
        for reason, text in (("not_seen", "have no transaction in the blocks read"),
                             ("contracts", "are contracts (only externally owned accounts are scored)")):
            if missing.get(reason):
                shown = ", ".join(missing[reason][:5]) + (" …" if len(missing[reason]) > 5 else "")
                click.echo(f"warning: {len(missing[reason])} of the {len(addresses)} addresses asked for {text}, "
                           f"not scored: {shown}", err=True)


def _print(result: dict, out: str | None) -> None:
    from rich.table import Table

    from chainfl.cli.audit import console as make_console

    console = make_console()
    rel = result["release"]
    policy = result["alert_policy"]
    cap = "" if policy["rank_cap"] is None else f", at most {policy['rank_cap']} alerts"
    console.print(f"Task {rel['task_id']} {rel['source']} {rel['cid']}; blocks {result['from_block']}.."
                  f"{result['to_block']}: {result['accounts']} accounts scored, {result['flagged']} flagged "
                  f"(threshold {policy['threshold']:.4f}{cap}; {result['above_threshold']} at or above the "
                  f"threshold) ({result['seconds']['extract']:.2f} s features, "
                  f"{result['seconds']['score']:.2f} s scoring)")
    rows = result["alerts"][:15]
    labelled = bool(rows) and "label" in rows[0]
    t = Table(title="Highest-scoring alerts" if rows else "No alerts")
    t.add_column("rank", justify="right")
    t.add_column("address", no_wrap=True, min_width=42)
    t.add_column("score", justify="right")
    if labelled:
        t.add_column("label", justify="right")
    t.add_column("top features")
    for row in rows:
        cells = [str(row["rank"]), row["address"], f"{row['score']:.4f}"]
        if labelled:
            cells.append("?" if row["label"] is None else str(row["label"]))
        cells.append(", ".join(f"{f['feature']} ({f['attribution']:+.2f})" for f in row["top_features"]))
        t.add_row(*cells)
    console.print(t)
    m = result["metrics"]
    if m:
        a = m["alerts"]
        console.print(f"Against {m['labelled']} labelled accounts, at the threshold: precision {m['precision']:.4f}, "
                      f"recall {m['recall']:.4f}, F1 {m['f1']:.4f}, ROC-AUC {m['roc_auc']:.4f}, PR-AUC "
                      f"{m['pr_auc']:.4f}; the {a['flagged']} labelled alerts: precision {a['precision']:.4f}, recall "
                      f"{a['recall']:.4f}")
    if out:
        click.echo(f"ranked accounts written to {out}", err=True)
    sys.stdout.flush()


commands = [detect_cmd]
