"""``chainfl coordinator run``: create (or resume) a task and drive it to its release."""

from __future__ import annotations

import json
import os
import tempfile

import click

from chainfl.cli._common import echo_json, json_option, resolve_store, rpc_option, store_option
from chainfl.cli.node import _password, account_option, keystore_option


@click.group("coordinator")
def coordinator_group():
    """Run the coordinator of a training task as its own process."""


def _write_atomic(path: str, obj) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


@coordinator_group.command("run")
@click.option("--mode", type=click.Choice(["chained", "federated"]), default="chained", show_default=True)
@click.option("--nodes", default=None, help="Node count (dev accounts 1..N) or comma-separated addresses.")
@click.option("--stats", "stats_files", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Per-node statistics from `chainfl node stats` (repeat --stats for each node).")
@click.option("--rounds", type=int, default=3, show_default=True)
@click.option("--strategy", default="screened-fedavg", show_default=True, help="Federated aggregation strategy.")
@click.option("--no-gate", is_flag=True, help="Chained: no validation gate.")
@click.option("--epochs", type=int, default=2, show_default=True)
@click.option("--hidden", default="32,16", show_default=True, help="Hidden layer widths of the MLP.")
@click.option("--model", type=click.Choice(["mlp", "logreg"]), default="mlp", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--round-seconds", type=int, default=600, show_default=True, help="Federated round deadline.")
@click.option("--quorum", type=int, default=0, show_default=True, help="Federated: finalize at this many updates (0 = all).")
@click.option("--turn-timeout", type=int, default=120, show_default=True,
              help="Chained: skip a node's turn after this many seconds without progress (recorded in the task).")
@click.option("--fetch-patience", type=int, default=60, show_default=True,
              help="Seconds a blob that does not resolve is waited for before it is rejected (chained) or "
                   "flagged (federated); recorded in the task, shorter than --turn-timeout.")
@click.option("--report-timeout", type=float, default=60.0, show_default=True,
              help="Seconds to wait for the nodes' validation histograms at the end.")
@click.option("--reports", "reports_dir", type=click.Path(file_okay=False), default=None,
              help="Shared directory where nodes drop their signed validation histograms.")
@click.option("--task", "task_id", type=int, default=None, help="Resume this task instead of creating one.")
@click.option("--from-block", type=int, default=0, show_default=True, help="With --task: first block to read.")
@click.option("--task-file", type=click.Path(dir_okay=False), default=None,
              help="Write {registry, task_id, from_block} here as soon as the task exists.")
@click.option("--registry", "registry_address", envvar="CHAINFL_REGISTRY", default=None,
              help="Registry address (default: the recorded deployment; --deploy makes one if none).")
@click.option("--deploy", is_flag=True, help="Deploy a registry if none is given or recorded.")
@click.option("--poll", type=float, default=0.5, show_default=True)
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds.")
@account_option
@keystore_option
@rpc_option
@store_option
@json_option
def run_cmd(mode, nodes, stats_files, rounds, strategy, no_gate, epochs, hidden, model, seed, round_seconds,
            quorum, turn_timeout, fetch_patience, report_timeout, reports_dir, task_id, from_block, task_file, registry_address,
            deploy, poll, timeout, account, keystore, rpc, store, as_json):
    """Create a task from the nodes' statistics and drive it: rounds/turns, aggregation, flags,
    the release (threshold from the nodes' histograms) and closing. With --task, resume one."""
    from chainfl.agents.coordinator import Coordinator
    from chainfl.agents.reports import DirectoryReportBox
    from chainfl.agents.runner import limit_torch_threads
    from chainfl.agents.setup import build_spec, load_signer, open_registry, resolve_nodes
    from chainfl.chain import connect
    from chainfl.data.scaling import FeatureStats
    from chainfl.storage import open_store

    limit_torch_threads()
    with connect(rpc) as chain:
        signer = load_signer(chain, 0 if account is None and not keystore else account, keystore,
                             _password(keystore))
        registry = open_registry(chain, registry_address, deploy=deploy, admin=signer)
        store_ = open_store(resolve_store(store))
        coordinator = Coordinator(registry, store_, signer, report_timeout=report_timeout,
                                  reports=DirectoryReportBox(reports_dir) if reports_dir else None)
        if task_id is None:
            if not nodes or not stats_files:
                raise click.UsageError("a new task needs --nodes and --stats (or --task to resume one)")
            stats = []
            for path in stats_files:
                with open(path) as f:
                    stats.append(FeatureStats.from_dict(json.load(f)))
            spec = build_spec(mode=mode, nodes=resolve_nodes(chain, nodes), rounds=rounds, stats=stats,
                              hidden=tuple(int(h) for h in hidden.split(",") if h.strip()), model_kind=model,
                              epochs=epochs, strategy=strategy, gate=not no_gate, seed=seed,
                              round_seconds=round_seconds, quorum=quorum, turn_seconds=turn_timeout,
                              fetch_patience=fetch_patience)
            from_block = chain.block_number()
            task_id = coordinator.create_task(spec)
        else:
            coordinator.attach(task_id, start_block=from_block)
        info = {"registry": registry.address, "task_id": task_id, "from_block": from_block, "chain": chain.url}
        if task_file:
            _write_atomic(task_file, info)
        click.echo(f"coordinating task {task_id} on registry {registry.address} ({chain.url})", err=True)
        coordinator.run(poll_interval=poll, timeout=timeout)
        task = registry.task(task_id)
        summary = dict(info, closed=task.closed, mode=coordinator.spec.mode,
                       release_cid=coordinator.release.cid if coordinator.release else None,
                       release_digest=coordinator.release.hex if coordinator.release else None,
                       threshold=coordinator.threshold, reported_nodes=coordinator.reported_nodes)
    if as_json:
        echo_json(summary)
    else:
        click.echo(f"task {task_id} closed; release {summary['release_cid']} (threshold {summary['threshold']})")


commands = [coordinator_group]
