"""``chainfl node stats`` and ``chainfl node run``: one data holder as its own process."""

from __future__ import annotations

import json
import logging

import click

from chainfl.cli._common import echo_json, json_option, resolve_store, rpc_option, store_option

log = logging.getLogger(__name__)

account_option = click.option("--account", type=int, default=None,
                              help="Dev account index from ganache.env's mnemonic (local chains).")
keystore_option = click.option("--keystore", type=click.Path(exists=True, dir_okay=False), default=None,
                               help="Encrypted JSON keystore (real networks); password from "
                                    "CHAINFL_KEYSTORE_PASSWORD or a prompt.")
split_options = [
    click.option("--val-fraction", type=float, default=0.2, show_default=True,
                 help="Share of the node's rows held out for validation (same in stats and run)."),
    click.option("--split-seed", type=int, default=0, show_default=True, help="Seed of that split."),
]


def _split(f):
    for opt in reversed(split_options):
        f = opt(f)
    return f


def _password(keystore):
    import os

    if not keystore:
        return None
    return os.environ.get("CHAINFL_KEYSTORE_PASSWORD") or click.prompt("Keystore password", hide_input=True)


@click.group("node")
def node_group():
    """Run a node agent (one data holder) as its own process."""


@node_group.command("stats")
@click.option("--data", "data_path", type=click.Path(exists=True, dir_okay=False), required=True)
@click.option("--label", required=True, help="Label column of the CSV.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="Where to write stats JSON.")
@_split
def stats_cmd(data_path, label, output, val_fraction, split_seed):
    """Aggregate statistics of this node's training rows (counts, sums, sums of squares only),
    for the coordinator to agree the feature scaling without seeing any row."""
    from chainfl.agents.node import LocalData
    from chainfl.data.datasets import load_csv

    ds = load_csv(data_path, label)
    local = LocalData.split(ds.X, ds.y, ds.feature_names, val_fraction, split_seed)
    stats = local.stats()
    with open(output, "w") as f:
        json.dump(stats.to_dict(), f, indent=2, sort_keys=True)
    click.echo(f"wrote statistics of {stats.count} rows x {len(stats.feature_names)} features to {output}")


@node_group.command("run")
@click.option("--task", "task_id", type=int, required=True, help="Task id on the registry.")
@click.option("--registry", "registry_address", envvar="CHAINFL_REGISTRY", default=None,
              help="Registry address (default: the recorded deployment).")
@click.option("--data", "data_path", type=click.Path(exists=True, dir_okay=False), required=True)
@click.option("--label", required=True, help="Label column of the CSV.")
@click.option("--reports", "reports_dir", type=click.Path(file_okay=False), default=None,
              help="Shared directory for the signed validation-score histograms (threshold).")
@click.option("--from-block", type=int, default=0, show_default=True, help="Block to start reading events at.")
@click.option("--poll", type=float, default=0.5, show_default=True, help="Seconds between polls.")
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds.")
@account_option
@keystore_option
@_split
@rpc_option
@store_option
@json_option
def run_cmd(task_id, registry_address, data_path, label, reports_dir, from_block, poll, timeout, account,
            keystore, val_fraction, split_seed, rpc, store, as_json):
    """Follow task TASK and train on this node's own data whenever it is its turn / a round is open.

    Resumable: after a crash, run it again; it works out from chain state what is left to do and
    never submits twice."""
    from chainfl.agents.follower import EventFollower
    from chainfl.agents.modelio import load_spec
    from chainfl.agents.node import LocalData, NodeAgent
    from chainfl.agents.reports import DirectoryReportBox
    from chainfl.agents.runner import limit_torch_threads
    from chainfl.agents.setup import load_signer, open_registry
    from chainfl.chain import connect
    from chainfl.data.datasets import load_csv
    from chainfl.errors import AgentError
    from chainfl.storage import open_store

    limit_torch_threads()
    with connect(rpc) as chain:
        signer = load_signer(chain, account, keystore, _password(keystore))
        registry = open_registry(chain, registry_address)
        store_ = open_store(resolve_store(store))
        follower = EventFollower(registry, task_id, start_block=from_block)
        follower.catch_up()
        created = follower.history.created
        if created is None:
            raise AgentError(f"task {task_id} has no TaskCreated event at or after block {from_block} on "
                             f"registry {registry.address}; check --task, --registry and --from-block")
        spec = load_spec(store_, created["configCid"], created["configDigest"])
        ds = load_csv(data_path, label, features=list(spec.feature_names))
        local = LocalData.split(ds.X, ds.y, ds.feature_names, val_fraction, split_seed)
        agent = NodeAgent(registry, store_, signer, task_id, local, start_block=follower.history.created_block,
                          reports=DirectoryReportBox(reports_dir) if reports_dir else None)
        click.echo(f"node {signer.address} following task {task_id} on {chain.url}", err=True)
        agent.run(poll_interval=poll, timeout=timeout)
        summary = {"node": signer.address, "task": task_id, "actions": agent.actions}
    if as_json:
        echo_json(summary)
    else:
        click.echo(f"task {task_id} closed; {signer.address} did: {', '.join(agent.actions) or 'nothing'}")


commands = [node_group]
