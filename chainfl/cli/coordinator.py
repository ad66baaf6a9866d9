"""``chainfl coordinator run``: create (or resume) a task and drive it to its release."""

from __future__ import annotations

import json
import os
import tempfile

import click

from chainfl.cli._common import echo_json, json_option, resolve_store, rpc_option, store_option, talk
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
@click.option("--rounds", type=click.IntRange(1), default=None,
              help="Chained: passes over the nodes [default: 5 for newton, 3 for mlp/logreg]; federated: rounds [default: what the model "
                   "needs: 120 for the default gbdt; mlp/logreg up to 100, stopped early (--stop-patience)]; with gbdt, as many trees as fit.")
@click.option("--stop-patience", type=click.IntRange(0), default=None,
              help="Federated: end the task when the median of the nodes' signed validation losses has not improved "
                   "for this many rounds (recorded on chain, re-checked by the audit); 0 = off (mlp/logreg then run "
                   "--rounds, default 100) [default: 5 for mlp/logreg when --rounds is not given; otherwise, and "
                   "for gbdt, off].")
@click.option("--strategy", default="screened-fedavg", show_default=True,
              help="Federated aggregation strategy (gbdt: screened-sum = screened-fedavg, sum = fedavg; "
                   "mlp/logreg: any of `chainfl run --help`).")
@click.option("--no-gate", is_flag=True, help="Chained: no validation gate.")
@click.option("--peer", is_flag=True,
              help="Federated mlp/logreg: peer validation of every round's updates (nodes score each other's "
                   "updates on their validation rows and sign the scores; needs --reports shared with the nodes).")
@click.option("--peer-seconds", type=click.IntRange(1), default=120, show_default=True,
              help="With --peer: chain seconds to wait for the nodes' peer reports once a round is ready to end.")
@click.option("--peer-metric", type=click.Choice(["loss", "auc", "auc+loss"]), default=None,
              help="With --peer: the score its rule reads - per-class log-loss gains (loss, the default), ROC-AUC "
                   "gains (auc), or both, each scaled by its round's median |score| (auc+loss).")
@click.option("--epochs", type=int, default=2, show_default=True)
@click.option("--hidden", default="32,16", show_default=True, help="Hidden layer widths of the MLP.")
@click.option("--model", type=click.Choice(["auto", "gbdt", "newton", "mlp", "logreg"]), default="auto", show_default=True,
              help="auto: gbdt in federated mode (unless --strategy is a weight-averaging rule); newton in chained "
                   "mode when every node's statistics carry grid counts (`node stats --bins`), else mlp. "
                   "newton: chained only, its bins from those counts.")
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
@click.option("--from-block", type=int, default=0, show_default=True, help="First block to read events from.")
@click.option("--task-file", type=click.Path(dir_okay=False), default=None,
              help="Write {registry, task_id, from_block} here as soon as the task exists; if it names an "
                   "open task of this registry, that task is resumed.")
@click.option("--new", "force_new", is_flag=True,
              help="Create a new task even if an open task of this coordinator has exactly these settings "
                   "(by default that task is resumed).")
@click.option("--quiet", is_flag=True, help="No per-round lines on stderr.")
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
def run_cmd(mode, nodes, stats_files, rounds, stop_patience, strategy, no_gate, peer, peer_seconds, peer_metric, epochs, hidden, model, seed, round_seconds,
            quorum, turn_timeout, fetch_patience, report_timeout, reports_dir, task_id, from_block, task_file,
            force_new, quiet, registry_address, deploy, poll, timeout, account, keystore, rpc, store, as_json):
    """Create a task from the nodes' statistics and drive it: rounds/turns, decisions on every
    update, the release (threshold from the nodes' signed histograms) and closing.

    Resumes instead of creating when it can: the task of --task, or of --task-file when that file
    names an open task, or an open task of this coordinator with exactly the same settings (a
    rerun of the same command); --new forces a new task. Prints one line per round on stderr."""
    from chainfl.agents.coordinator import Coordinator
    from chainfl.agents.reports import DirectoryReportBox
    from chainfl.agents.runner import limit_torch_threads
    from chainfl.agents.setup import (build_spec, load_signer, model_for, open_registry, read_stats, resolve_nodes,
                                      stats_for_nodes, stopping_settings)
    from chainfl.chain import connect
    from chainfl.storage import open_store

    limit_torch_threads()
    talk(quiet)
    with connect(rpc) as chain:
        signer = load_signer(chain, 0 if account is None and not keystore else account, keystore,
                             _password(keystore))
        registry = open_registry(chain, registry_address, deploy=deploy, admin=signer)
        store_ = open_store(resolve_store(store))
        coordinator = Coordinator(registry, store_, signer, report_timeout=report_timeout,
                                  reports=DirectoryReportBox(reports_dir) if reports_dir else None)
        if task_id is None and task_file and os.path.exists(task_file) and not force_new:
            task_id, from_block = _from_task_file(task_file, registry, from_block)
        if task_id is None:
            if not nodes or not stats_files:
                raise click.UsageError("a new task needs --nodes and --stats (or --task to resume one)")
            node_list = resolve_nodes(chain, nodes)
            entries = []
            for path in stats_files:
                with open(path) as f:
                    entries.append(read_stats(json.load(f)))
            node_stats = stats_for_nodes(entries, node_list)
            spec = build_spec(mode=mode, nodes=node_list, rounds=rounds, stats=node_stats,
                              hidden=tuple(int(h) for h in hidden.split(",") if h.strip()),
                              model_kind=model_for(mode, strategy, node_stats) if model == "auto" else model,
                              epochs=epochs, strategy=strategy, gate=not no_gate, seed=seed,
                              round_seconds=round_seconds, quorum=quorum, turn_seconds=turn_timeout,
                              fetch_patience=fetch_patience, stopping=stopping_settings(stop_patience),
                              peer=({"seconds": peer_seconds} | ({"metric": peer_metric} if peer_metric else {}))
                              if peer else None)
            if peer and not reports_dir:
                raise click.UsageError("--peer needs --reports DIR shared with the nodes (their signed peer reports "
                                       "travel there)")
            same = None if force_new else _open_task_like(registry, signer.address, spec, from_block)
            if same is not None:
                task_id, from_block = same
                click.echo(f"resuming task {task_id}: open, coordinated by this account, same settings "
                           f"(pass --new for another task)", err=True)
                coordinator.attach(task_id, start_block=from_block)
            else:
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


def _from_task_file(path: str, registry, from_block: int) -> tuple[int | None, int]:
    """The open task a task file names on this registry (None if it names none, another
    registry, or a closed task)."""
    from chainfl.chain.errors import RegistryUnknownTask

    try:
        with open(path) as f:
            info = json.load(f)
        task_id = int(info["task_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None, from_block
    if str(info.get("registry", "")).lower() != registry.address.lower():
        return None, from_block
    try:
        if registry.task(task_id).closed:
            return None, from_block
    except RegistryUnknownTask:
        return None, from_block
    click.echo(f"resuming task {task_id} from {path}", err=True)
    return task_id, int(info.get("from_block", from_block))


def _open_task_like(registry, coordinator: str, spec, from_block: int) -> tuple[int, int] | None:
    """``(task_id, creation block)`` of the newest open task this account coordinates whose spec
    digest equals ``spec``'s (a rerun of the same command), else None."""
    digest = spec.digest()
    for event in reversed(registry.events(from_block, names=["TaskCreated"])):
        a = event.args
        if a["coordinator"].lower() == coordinator.lower() and bytes(a["configDigest"]) == digest \
                and not registry.task(int(a["taskId"])).closed:
            return int(a["taskId"]), event.block_number
    return None


commands = [coordinator_group]
