"""``chainfl run``: the whole job in one process (see :mod:`chainfl.agents.runner`)."""

from __future__ import annotations

import click

from chainfl.cli._columns import column_options, limit_options, names
from chainfl.cli._common import console, echo_json, json_option, rpc_option, store_option


def _table(result) -> None:
    from rich.table import Table

    c = result.config
    t = result.test
    table = Table(title=f"chainfl run — task {result.task_id} ({c.mode})", show_header=True)
    table.add_column("setting / metric", overflow="fold")
    table.add_column("value", justify="right", overflow="fold")
    rows = [
        ("nodes x rounds", f"{c.nodes} x {_rounds(result)}"),
        ("model", result.data.get("model", c.model)),
        ("strategy" if c.mode == "federated" else "validation gate",
         c.strategy if c.mode == "federated" else
         ("newton rule (always on)" if result.data.get("model") == "newton" else "on" if c.gate else "off")),
        ("attack", "none" if c.attack == "none" else f"{c.attack} ({_nodes(len(result.data.get('malicious', [])))})"),
        ("data", f"{result.data.get('source')} ({c.partition})"),
        (f"F1 on {t.get('source')}", f"{t['f1']:.3f}"),
        ("precision / recall", f"{t['precision']:.3f} / {t['recall']:.3f}"),
        ("ROC-AUC / PR-AUC", f"{_f(t.get('roc_auc'))} / {_f(t.get('pr_auc'))}"),
        ("threshold (from node histograms)", f"{result.threshold:.4f}"),
    ]
    if result.rounds:
        first, last = result.rounds[0], result.rounds[-1]
        rows.append(("loss first -> last round", f"{_f(first.get('loss'))} -> {_f(last.get('loss'))}"))
    rejected = sum(r["rejections_received"] for r in result.per_node)
    flagged = sum(r["flags"] for r in result.per_node)
    bad_caught = sum(r["rejections_received"] + r["flags"] for r in result.per_node if r["malicious"])
    rows.append(("rejections / flags on chain", f"{rejected} / {flagged} ({bad_caught} on malicious nodes)"))
    excluded = sum(r.get("excluded", 0) for r in result.per_node)
    if excluded:
        bad_excluded = sum(r.get("excluded", 0) for r in result.per_node if r["malicious"])
        rows.append(("updates excluded (rule / peers, no blame)",
                     f"{excluded} ({bad_excluded} of malicious nodes)"))
    refused = sum(r.get("refused", 0) for r in result.per_node)
    if refused:
        rows.append(("submissions refused on chain", f"{refused} (outsiders: not nodes of the task)"))
    if result.audit is not None:
        rows.append(("audit", "ok" if result.audit.get("ok") else f"{len(result.audit.get('violations', []))} violation(s)"))
        bad = result.audit.get("misbehaving") or {}
        if bad:
            kinds: dict[str, int] = {}
            for per in bad.values():
                for k, n in per.items():
                    kinds[k] = kinds.get(k, 0) + n
            rows.append(("handled misbehaviour", f"{_nodes(len(bad))}: "
                         + ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items()))))
    rows += [("release CID", result.release_cid), ("registry", result.registry),
             ("time (s)", f"{result.timings.get('total', 0):.1f}"), ("run directory", str(result.run_dir))]
    for k, v in rows:
        table.add_row(k, str(v))
    console().print(table)


def _nodes(n: int) -> str:
    return f"{n} node" if n == 1 else f"{n} nodes"


def _rounds(result) -> str:
    from chainfl.agents.stopping import STOP_PREFIX

    planned = result.data.get("planned_rounds", result.config.rounds)
    done = result.data.get("finalized_rounds")
    if done is not None and (result.data.get("close_reason") or "").startswith(STOP_PREFIX):
        return f"{done} (stopped early on the nodes' validation reports; up to {planned})"
    return f"{planned}"


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


@click.command("run")
@click.option("--mode", type=click.Choice(["chained", "federated"]), default="chained", show_default=True)
@click.option("--nodes", type=int, default=5, show_default=True, help="Node accounts (data holders).")
@click.option("--rounds", type=click.IntRange(1), default=None,
              help="Chained: passes over all nodes [default: 5 for newton, 3 for mlp/logreg]; federated: rounds [default: what the model "
                   "needs: 120 for the default gbdt (116 trees); mlp/logreg up to 100, stopped early (--stop-patience)]. With gbdt, as many trees as fit.")
@click.option("--stop-patience", type=click.IntRange(0), default=None,
              help="Federated: end the task when the median of the nodes' signed validation losses has not improved "
                   "for this many rounds (recorded on chain, re-checked by the audit); 0 = off (mlp/logreg then run "
                   "--rounds, default 100) [default: 5 for mlp/logreg when --rounds is not given; otherwise, and "
                   "for gbdt, off].")
@click.option("--strategy", default="screened-fedavg", show_default=True,
              help="Federated aggregation strategy. gbdt: screened-sum (= screened-fedavg: validity bounds + "
                   "label-consistency screen) or sum (= fedavg: bounds only); mlp/logreg: fedavg, median, "
                   "trimmed-mean, krum, multi-krum, screened-fedavg, clipped-fedavg, screened-multi-krum.")
@click.option("--no-gate", is_flag=True, help="Chained: accept every incoming model (no validation gate).")
@click.option("--peer", is_flag=True,
              help="Federated mlp/logreg: peer validation - every node scores every other node's update on its own "
                   "validation rows and signs the scores; updates the peers' median scores clearly worse are left "
                   "out (recorded as evidence on chain, re-decided by the audit).")
@click.option("--peer-metric", type=click.Choice(["loss", "auc", "auc+loss"]), default=None,
              help="With --peer: the score its rule reads - per-class log-loss gains (loss, the default), ROC-AUC "
                   "gains (auc), or both, each scaled by its round's median |score| (auc+loss).")
@click.option("--partition", "partition_", type=click.Choice(["iid", "dirichlet", "quantity", "blocks"]),
              default="iid", show_default=True)
@click.option("--alpha", type=float, default=0.5, show_default=True, help="Dirichlet/quantity concentration.")
@click.option("--attack", default="none", show_default=True, metavar="KIND[,KIND...]",
              help="What malicious nodes do: label-flip (train on flipped labels), boosted (model "
                   "replacement: flipped labels, step x10), amplified (honest step x10), sign-flip "
                   "(step x-10), noise/gaussian-noise, free-rider (resubmit the global model); protocol "
                   "attacks: copy (resubmit another node's update), outsider (registered accounts outside "
                   "the task submit anyway), inflated (claim 10^9 rows for the unchanged model), "
                   "unresolvable (submit a CID whose blob is never stored). Several comma-separated kinds "
                   "split the attackers between them.")
@click.option("--malicious-fraction", type=click.FloatRange(0.0, 1.0), default=0.2, show_default=True,
              help="Share of the nodes that attack (with --attack).")
@click.option("--data", "data_path", type=click.Path(exists=True), default=None,
              help="Train on a labelled CSV (needs --label, unless a features.json sits beside it) instead of a "
                   "simulation, or on the node files of a `chainfl data prepare` directory (its node1.csv … "
                   "as the nodes, its test.csv as the test set).")
@click.option("--label", default=None, help="Label column of --data.")
@column_options
@limit_options
@click.option("--test-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.2,
              show_default=True, help="--data / --dataset eth_fraud: share of each class held out for the test.")
@click.option("--val-fraction", type=click.FloatRange(0, 0.5), default=0.2, show_default=True,
              help="Share of each node's rows held out for validation (threshold, validation gate); at most 0.5 "
                   "(a node's reports may count no more rows than the training rows it committed).")
@click.option("--dataset", type=click.Choice(["simulate", "eth_fraud"]), default=None,
              help="eth_fraud: the real labelled dataset in CHAINFL_DATA_DIR.")
@click.option("--accounts", type=int, default=400, show_default=True,
              help="Simulated accounts (training data); 400 is what the embedded chain lands in ~60 s (benchmarks/results/simulate.md).")
@click.option("--eval-accounts", type=int, default=200, show_default=True, help="Simulated accounts (new chain), simulated in parallel.")
@click.option("--epochs", type=int, default=2, show_default=True, help="Local epochs per visit/round.")
@click.option("--lr", type=float, default=1e-2, show_default=True,
              help="Local learning rate (long chained runs need less, e.g. 5e-4 for 50 nodes x 20 rounds).")
@click.option("--model", type=click.Choice(["auto", "gbdt", "newton", "mlp", "logreg"]), default="auto", show_default=True,
              help="auto: gbdt (histogram-based federated boosted trees, equal to pooled training) in federated "
                   "mode unless --strategy is a weight-averaging rule (krum, median, ...); newton in chained mode "
                   "(logistic regression on piecewise-linear bins, one Newton step per pass, equal to pooled "
                   "Newton; 5 passes by default).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--registry", "registry_address", envvar="CHAINFL_REGISTRY", default=None,
              help="Registry address (default: the recorded deployment, else a new one).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run directory (default CHAINFL_HOME/runs/<id>).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@rpc_option
@store_option
@json_option
def run_cmd(mode, nodes, rounds, stop_patience, strategy, no_gate, peer, peer_metric, partition_, alpha, attack, malicious_fraction, data_path,
            label, features, drop, features_file, fill, max_rows, max_bytes, test_fraction, val_fraction,
            dataset, accounts, eval_accounts, epochs, lr, model, seed, registry_address, out, quiet, rpc,
            store, as_json):
    """Train a detector across NODES data holders with the registry as the audit trail.

    Simulates labelled activity on a fresh chain (or reads --data / --dataset), partitions it,
    trains (chained or federated, optionally with attackers), evaluates on a new simulated chain,
    audits the task and writes the run directory.
    """
    from chainfl.agents.runner import RunConfig, run_job

    if data_path and dataset:
        raise click.UsageError("use either --data CSV or --dataset, not both")
    source = "csv" if data_path else (dataset or "simulate")
    cfg = RunConfig(mode=mode, nodes=nodes, rounds=rounds, stop_patience=stop_patience, strategy=strategy, gate=not no_gate,
                    peer=peer, peer_metric=peer_metric, partition=partition_, alpha=alpha,
                    attack=",".join("gaussian-noise" if k.strip() == "noise" else k.strip() for k in attack.split(",")),
                    malicious_fraction=malicious_fraction, dataset=source, data=data_path, label=label,
                    features=names(features), drop=names(drop) or (), features_file=features_file, fill=fill,
                    max_rows=max_rows, max_bytes=max_bytes, test_fraction=test_fraction, val_fraction=val_fraction,
                    accounts=accounts, eval_accounts=eval_accounts, epochs=epochs, lr=lr, model=model, seed=seed,
                    rpc=rpc, store=store, registry=registry_address)
    result = run_job(cfg, out=out, progress=not quiet and not as_json)
    if as_json:
        echo_json(result.to_dict())
    else:
        _table(result)
    if result.audit is not None and not result.audit.get("ok"):
        for v in result.audit.get("violations", []):
            click.secho(f"VIOLATION {v.get('text', v)}", fg="red", err=True)
        click.get_current_context().exit(1)      # its own audit failed: the release must not be trusted


commands = [run_cmd]
