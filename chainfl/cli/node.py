"""``chainfl node stats`` and ``chainfl node run``: one data holder as its own process."""

from __future__ import annotations

import json
import logging

import click

from chainfl.cli._columns import column_options, limit_options, names
from chainfl.cli._common import echo_json, json_option, resolve_store, rpc_option, store_option, talk

log = logging.getLogger(__name__)

account_option = click.option("--account", type=int, default=None,
                              help="Dev account index from ganache.env's mnemonic (local chains).")
keystore_option = click.option("--keystore", type=click.Path(exists=True, dir_okay=False), default=None,
                               help="Encrypted JSON keystore (real networks); password from "
                                    "CHAINFL_KEYSTORE_PASSWORD or a prompt.")
split_options = [
    click.option("--val-fraction", type=click.FloatRange(0, 0.5), default=0.2, show_default=True,
                 help="Share of the node's rows held out for validation (same in stats and run); at most 0.5: "
                      "a node's reports may count no more rows than the training rows it committed."),
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
@click.option("--label", default=None, help="Label column of the CSV [the features.json's].")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="Where to write stats JSON.")
@click.option("--bins", is_flag=True, default=False,
              help="Also count the rows per cell of the fixed grid (needed by --model newton, whose bins are "
                   "agreed from them; reveals each feature's distribution at ~9 % resolution).")
@column_options
@_split
@account_option
@keystore_option
@json_option
def stats_cmd(data_path, label, output, bins, features, drop, features_file, fill, val_fraction, split_seed, account,
              keystore, as_json):
    """Aggregate statistics of this node's training rows (counts, sums, sums of squares only),
    for the coordinator to agree the feature scaling without seeing any row.

    The CSV is read in chunks: memory stays bounded whatever its size, and the statistics equal
    those of the rows `node run` trains on, bit for bit. With --account or --keystore the file
    names the node and carries its signature: its row count is the node's commitment (the task
    caps the samples it may claim at it) and the coordinator matches files to nodes by it."""
    from chainfl.data.datasets import read_labels, stream_feature_stats
    from chainfl.data.prepare import read_plan

    plan = read_plan(data_path, label=label, features=names(features), drop=names(drop) or (), fill=fill,
                     features_file=features_file)
    y = read_labels(data_path, plan.label)
    train = training_rows(y, val_fraction, split_seed)
    result = stream_feature_stats(data_path, plan.label, train, features=plan.features, drop=plan.drop,
                                  fill_missing=plan.fill, with_grid=bins)
    stats = result.stats
    body = stats.to_dict()
    if account is not None or keystore:
        from chainfl import config
        from chainfl.agents.setup import sign_stats
        from chainfl.chain.accounts import derive_account, load_keystore

        signer = load_keystore(keystore, _password(keystore)) if keystore else \
            derive_account(config.load_node_settings().mnemonic, int(account))
        body = sign_stats(stats, signer)
    with open(output, "w") as f:
        json.dump(body, f, indent=2, sort_keys=True)
    summary = {"output": output, "rows": result.rows, "training_rows": stats.count,
               "validation_rows": result.rows - stats.count, "label": plan.label,
               "features": list(stats.feature_names), "not_features": result.choice.dropped_dict(),
               "features_file": plan.manifest, "node": body.get("node"),
               "grid_cells": None if stats.grid is None else len(stats.grid)}
    if as_json:
        echo_json(summary)
        return
    for column, reason in result.choice.dropped:
        click.echo(f"not a feature: {column!r}: {reason}", err=True)
    source = f" (list from {plan.manifest})" if plan.manifest else ""
    click.echo(f"wrote statistics of {stats.count} rows x {len(stats.feature_names)} features{source} to {output}")


def training_rows(y, val_fraction: float, seed: int):
    """Which rows `node run` trains on: those :meth:`chainfl.agents.node.LocalData.split` keeps out
    of validation (per class, a seeded permutation; its first floor(n_c x fraction) rows validate),
    as a boolean mask, computed from the labels alone (tested equal to LocalData.split)."""
    import math

    import numpy as np

    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    val = np.zeros(len(y), dtype=bool)
    for c in (0, 1):
        idx = rng.permutation(np.flatnonzero(y == c))
        val[idx[:int(math.floor(len(idx) * val_fraction))]] = True
    return ~val


@node_group.command("run")
@click.option("--task", "task_id", type=int, required=True, help="Task id on the registry.")
@click.option("--registry", "registry_address", envvar="CHAINFL_REGISTRY", default=None,
              help="Registry address (default: the recorded deployment).")
@click.option("--data", "data_path", type=click.Path(exists=True, dir_okay=False), required=True)
@click.option("--label", default=None, help="Label column of the CSV [the features.json's].")
@column_options
@limit_options
@click.option("--reports", "reports_dir", type=click.Path(file_okay=False), default=None,
              help="Shared directory for the signed validation-score histograms (threshold).")
@click.option("--from-block", type=int, default=0, show_default=True, help="Block to start reading events at.")
@click.option("--poll", type=float, default=0.5, show_default=True, help="Seconds between polls.")
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds.")
@click.option("--quiet", is_flag=True, help="No progress lines (submissions, handoffs, outages) on stderr.")
@click.option("--wait", type=click.FloatRange(min=0), default=600, show_default=True,
              help="Seconds to wait for the task to be created (a node may start before the coordinator).")
@account_option
@keystore_option
@_split
@rpc_option
@store_option
@json_option
def run_cmd(task_id, registry_address, data_path, label, features, drop, features_file, fill, max_rows, max_bytes,
            reports_dir, from_block, poll, timeout, quiet, wait, account, keystore, val_fraction, split_seed, rpc,
            store, as_json):
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
    from chainfl.data.datasets import CsvLimits, load_csv
    from chainfl.data.prepare import read_plan
    from chainfl.storage import open_store

    plan = read_plan(data_path, label=label, features=names(features), drop=names(drop) or (), fill=fill,
                     features_file=features_file)
    limits = CsvLimits.from_options(max_bytes, max_rows)
    limits.check(data_path)                    # before waiting for a task this node could not load
    limit_torch_threads()
    talk(quiet)
    with connect(rpc) as chain:
        signer = load_signer(chain, account, keystore, _password(keystore))
        registry = open_registry(chain, registry_address)
        store_ = open_store(resolve_store(store))
        follower = EventFollower(registry, task_id, start_block=from_block)
        created = _wait_for_task(follower, task_id, registry.address, from_block, wait, poll)
        spec = load_spec(store_, created["configCid"], created["configDigest"])
        _check_features(plan, spec.feature_names, task_id, data_path)
        ds = load_csv(data_path, plan.label, features=list(spec.feature_names), id_column=plan.id_column,
                      fill_missing=plan.fill, limits=limits)
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


def _wait_for_task(follower, task_id: int, registry: str, from_block: int, wait: float, poll: float) -> dict:
    """The task's TaskCreated arguments, polling up to ``wait`` seconds for them (one line on
    stderr says so); AgentError after that."""
    import time

    from chainfl.errors import AgentError

    follower.catch_up()
    if follower.history.created is not None:
        return follower.history.created
    deadline = time.monotonic() + wait
    if wait > 0:
        click.echo(f"task {task_id} does not exist yet on registry {registry}; waiting up to {wait:g} s "
                   f"for it to be created (--wait)", err=True)
    while follower.history.created is None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AgentError(f"task {task_id} was not created on registry {registry} within {wait:g} s (no "
                             f"TaskCreated event at or after block {from_block}); check --task, --registry and "
                             f"--from-block, or wait longer with --wait SECONDS")
        time.sleep(min(poll, left))
        follower.catch_up()
    return follower.history.created


def _check_features(plan, task_features, task_id: int, data_path) -> None:
    """This node's own feature choice (--features, --drop, a features.json) must agree with the
    task's list, which the coordinator took from the nodes' statistics."""
    from chainfl.errors import DataError

    task_features = list(task_features)
    if plan.features is not None:
        mine = [f for f in plan.features if f not in plan.drop]
        if sorted(mine) != sorted(task_features):
            where = plan.manifest or "--features"
            raise DataError(f"{data_path}: task {task_id} uses the features {task_features} but this node's list "
                            f"(from {where}) differs: missing here {sorted(set(task_features) - set(mine))}, "
                            f"extra here {sorted(set(mine) - set(task_features))}; use the same features.json / "
                            f"--features as the statistics the task was created from", path=str(data_path))
    clash = [d for d in plan.drop if d in task_features]
    if clash:
        raise DataError(f"{data_path}: task {task_id} uses column(s) {clash}, which --drop excludes; the task's "
                        f"features are fixed by the statistics it was created from", path=str(data_path))


commands = [node_group]
