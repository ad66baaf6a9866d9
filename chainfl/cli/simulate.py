"""``chainfl simulate``: labelled activity written to a chain as real transactions (the datasets
and features read back from a chain are ``chainfl data``, in :mod:`chainfl.cli.data`)."""

from __future__ import annotations

from pathlib import Path

import click

from chainfl import config
from chainfl.cli._common import echo_json, json_option, resolve_rpc, rpc_option


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


commands = [simulate_cmd]
