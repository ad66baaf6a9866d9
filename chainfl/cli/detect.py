"""``chainfl detect``: score every account of a chain with a task's audited release."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import click

from chainfl.cli._common import echo_json, json_option, resolve_rpc, resolve_store, store_option
from chainfl.cli.audit import registry_option, resolve_registry


@click.command("detect")
@click.option("--task", "task_id", type=int, required=True, help="Task whose release scores the accounts.")
@click.option("--rpc", default=None, help="URL of the chain to score (default: the registry's chain).")
@click.option("--registry-rpc", envvar="CHAINFL_RPC", default=None, show_envvar=True,
              help="URL of the chain where the task lives: eth-tester:// or http://host:port.")
@store_option
@registry_option
@click.option("--from-block", type=int, default=0, show_default=True, help="First block to read.")
@click.option("--to-block", type=int, default=None, help="Last block to read (default: latest).")
@click.option("-o", "--out", "out", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write the ranked accounts here (.csv, or .json for the full JSON result).")
@click.option("--labels", "labels_path", type=click.Path(exists=True), default=None,
              help="Known labels (CSV with address,label; a saved simulation directory; or JSON) "
                   "-> precision/recall/F1 at the release threshold.")
@click.option("--top", type=int, default=3, show_default=True, help="Features reported per account.")
@click.option("--no-audit", is_flag=True, help="Skip the history audit (the release is still verified).")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Seconds to wait for each blob.")
@json_option
def detect_cmd(task_id: int, rpc: str | None, registry_rpc: str | None, store: str | None,
               registry_address: str | None, from_block: int, to_block: int | None, out: str | None,
               labels_path: str | None, top: int, no_audit: bool, timeout: float, as_json: bool) -> None:
    """Audit task TASK, take its release (refused if anything fails verification), extract account
    features from blocks FROM..TO of the chain at --rpc, and rank every account by fraud score."""
    from chainfl.audit.detect import detect_result, load_release, read_labels, score_chain, write_csv, write_json
    from chainfl.chain import connect
    from chainfl.storage import open_store

    home_url = resolve_rpc(registry_rpc)
    target_url = rpc or home_url
    labels = read_labels(labels_path) if labels_path else None
    with contextlib.ExitStack() as stack:
        home = stack.enter_context(connect(home_url, must_exist=True))
        registry = resolve_registry(home, registry_address)
        release, _ = load_release(home, registry, open_store(resolve_store(store)), task_id,
                                  audit=not no_audit, timeout=timeout)
        target = home if target_url == home_url else stack.enter_context(connect(target_url, must_exist=True))
        scored = score_chain(release, target.w3, from_block, to_block, progress=not as_json)
    metrics = scored.metrics(labels) if labels is not None else None
    if out:
        (write_json(scored, out, release, metrics, top) if Path(out).suffix.lower() == ".json"
         else write_csv(scored, out, top))
    result = detect_result(scored, release, metrics, top)
    if as_json:
        echo_json(result)
        return
    _print(result, out)


def _print(result: dict, out: str | None) -> None:
    from rich.table import Table

    from chainfl.cli.audit import console as make_console

    console = make_console()
    rel = result["release"]
    console.print(f"Task {rel['task_id']} {rel['source']} {rel['cid']} (threshold {rel['threshold']:.4f}); "
                  f"blocks {result['from_block']}..{result['to_block']}: {result['accounts']} accounts scored, "
                  f"{result['flagged']} flagged "
                  f"({result['seconds']['extract']:.2f} s features, {result['seconds']['score']:.2f} s scoring)")
    t = Table(title="Highest scores")
    t.add_column("rank", justify="right")
    t.add_column("address", no_wrap=True, min_width=42)
    t.add_column("score", justify="right")
    t.add_column("label", justify="right")
    t.add_column("top features")
    for row in result["ranked"][:15]:
        t.add_row(str(row["rank"]), row["address"], f"{row['score']:.4f}", str(row["label"]),
                  ", ".join(f"{f['feature']} ({f['attribution']:+.2f})" for f in row["top_features"]))
    console.print(t)
    m = result["metrics"]
    if m:
        console.print(f"Against {m['labelled']} labelled accounts: precision {m['precision']:.4f}, recall "
                      f"{m['recall']:.4f}, F1 {m['f1']:.4f}, ROC-AUC {m['roc_auc']:.4f}, PR-AUC {m['pr_auc']:.4f}")
    if out:
        click.echo(f"ranked accounts written to {out}", err=True)
    sys.stdout.flush()


commands = [detect_cmd]
