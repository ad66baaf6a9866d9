"""``chainfl simulate`` (labelled activity as real transactions) and ``chainfl data`` (datasets,
features read from a chain)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import click

from chainfl import config
from chainfl.cli._common import echo_json, json_option, resolve_rpc, rpc_option
from chainfl.errors import ConfigError, DataError


@click.command("simulate")
@rpc_option
@click.option("--accounts", "n_accounts", type=int, default=400, show_default=True,
              help="Simulated accounts (each labelled normal or anomalous); at least 30.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Derives the accounts and every choice; a new seed on a fresh chain is a new blockchain.")
@click.option("--days", type=float, default=14.0, show_default=True, help="Simulated period (block timestamps).")
@click.option("--activity", type=float, default=1.0, show_default=True,
              help="Scales how many transactions normal accounts make.")
@click.option("--label-noise", type=float, default=0.03, show_default=True,
              help="Share of accounts whose recorded label is flipped.")
@click.option("--funder", "funder_index", type=int, default=0, show_default=True,
              help="Dev account (index) that pays for the simulation.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Directory for simulation.json, labels.csv, ledger.csv "
                   "[CHAINFL_HOME/simulations/chain<ID>-seed<S>].")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@json_option
def simulate_cmd(rpc, n_accounts, seed, days, activity, label_noise, funder_index, out, quiet, as_json):
    """Write a labelled simulation of normal and anomalous activity to the chain as real transactions."""
    from chainfl.chain import connect
    from chainfl.data.simplan import SimConfig
    from chainfl.data.simulator import simulate

    cfg = SimConfig(n_accounts=n_accounts, seed=seed, days=days, activity=activity, label_noise=label_noise)
    with connect(resolve_rpc(rpc)) as chain:
        sim = simulate(chain, funder=chain.account(funder_index), config=cfg, progress=not quiet)
        target = Path(out) if out else config.home_dir() / "simulations" / f"chain{sim.chain_id}-seed{seed}"
        sim.save(target)
    summary = {"accounts": len(sim.accounts), "transactions": len(sim.ledger),
               "positives": sum(sim.labels.values()), "from_block": sim.from_block, "to_block": sim.to_block,
               "seconds": round(sim.seconds, 2), "out": str(target), "seed": seed, "chain_id": sim.chain_id}
    if as_json:
        echo_json(summary)
    else:
        click.echo(f"{summary['transactions']} transactions of {summary['accounts']} accounts "
                   f"({summary['positives']} labelled anomalous) in blocks {sim.from_block}..{sim.to_block} "
                   f"({summary['seconds']} s); labels in {target}")


@click.group("data")
def data_group() -> None:
    """Datasets: the real eth_fraud data, features read from a chain."""


@data_group.command("features")
@rpc_option
@click.option("--from-block", type=int, default=None, help="First block [0, or where --state left off].")
@click.option("--to-block", type=int, default=None, help="Last block [latest].")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="CSV to write.")
@click.option("--labels", type=click.Path(exists=True), default=None,
              help="A simulation directory or labels CSV (address,label): keep labelled accounts, add 'label'.")
@click.option("--state", "state_path", type=click.Path(dir_okay=False), default=None,
              help="JSON file to resume from (if it exists) and to save the extraction state to.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@json_option
def features_cmd(rpc, from_block, to_block, output, labels, state_path, quiet, as_json):
    """Compute per-account features (the eth_fraud names) from the chain's blocks and write a CSV."""
    from chainfl.chain import connect
    from chainfl.data.features import FeatureState, extract_features

    state = None
    if state_path and Path(state_path).exists():
        state = FeatureState.loads(Path(state_path).read_text())
    with connect(resolve_rpc(rpc)) as chain:
        result = extract_features(chain.w3, from_block if from_block is not None else (None if state else 0),
                                  to_block, state=state, progress=not quiet)
    if state_path:
        Path(state_path).write_text(result.state.dumps())
    wanted = _read_labels(labels) if labels else None
    ds = result.dataset(wanted)
    with open(output, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["address", *ds.feature_names] + (["label"] if wanted is not None else []))
        for address, row, label in zip(ds.ids, ds.X.tolist(), ds.y.tolist()):
            writer.writerow([address, *[repr(float(v)) for v in row]] + ([label] if wanted is not None else []))
    summary = {"accounts": len(ds), "features": len(ds.feature_names), "output": output,
               "next_block": result.state.next_block}
    if as_json:
        echo_json(summary)
    else:
        click.echo(f"{summary['accounts']} accounts x {summary['features']} features -> {output} "
                   f"(resume at block {summary['next_block']})")


@data_group.command("eth-fraud")
@click.option("--path", type=click.Path(exists=True), default=None,
              help="The dataset file or its directory [CHAINFL_DATA_DIR/eth_fraud].")
@click.option("--missing-flag", is_flag=True, help="Add the 'ERC20 block empty' indicator (leaks the label).")
@json_option
def eth_fraud_cmd(path, missing_flag, as_json):
    """Load the real eth_fraud dataset and describe it (rows, positives, features)."""
    from chainfl.data import load_eth_fraud, schema

    ds = load_eth_fraud(path, missing_flag=missing_flag)
    info = {"source": ds.source, "rows": len(ds), "positives": int(ds.y.sum()),
            "positive_rate": round(ds.positive_rate, 4), "features": ds.feature_names,
            "derived_from_chain": [n for n in ds.feature_names if n in schema.DERIVED_FROM_CHAIN]}
    if as_json:
        echo_json(info)
        return
    click.echo(f"{info['rows']} accounts, {info['positives']} fraud ({info['positive_rate']:.1%}), "
               f"{len(ds.feature_names)} features ({len(info['derived_from_chain'])} derivable from chain data)")
    for name in ds.feature_names:
        mark = "*" if name in schema.DERIVED_FROM_CHAIN else " "
        click.echo(f" {mark} {name}: {schema.FEATURES.get(name, 'indicator')}")


def _read_labels(path: str) -> dict[str, int]:
    p = Path(path)
    if p.is_dir():
        p = p / "labels.csv"
    if p.suffix == ".json":
        data = json.loads(p.read_text())
        return {k.lower(): int(v) for k, v in data.get("labels", data).items()}
    try:
        with open(p, newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError as e:
        raise DataError(f"labels file {p} does not exist", path=str(p)) from e
    if not rows or "address" not in rows[0] or "label" not in rows[0]:
        raise ConfigError(f"{p}: expected a CSV with columns address,label")
    return {r["address"].lower(): int(r["label"]) for r in rows}


commands = [simulate_cmd, data_group]
