"""Where a federated round's time goes when it runs on chain: training vs chain vs storage.

Question 3 of issue 8 (first half). The benchmark FedAvg workload (see
:func:`benchmarks._common.federated_workload`: real eth_fraud data, 50 nodes, Dirichlet
alpha = 0.5, MLP 64-32, 1 local epoch) runs through chainfl's own node agents and coordinator
(``chainfl.agents``) on a registry, for each chain x store backend:

* chains: the embedded eth-tester chain (persisted, as ``chainfl run`` uses it), Anvil and
  Ganache (started with :class:`chainfl.chain.nodes.LocalNode` on free ports);
* stores: the embedded block store and a js-ipfs daemon
  (:class:`chainfl.storage.daemon.IpfsDaemon`).

Nothing in chainfl is edited to measure it: the registry and store the agents get are timing
proxies (:func:`benchmarks._common.timed_proxy`), and ``train_local``, the model codec and the
aggregation strategy are wrapped for the run (:class:`benchmarks._common.patched`). Each round's
wall time (coordinator opens -> coordinator finalizes) is split into

* **training** — ``train_local`` in the node agents;
* **chain** — every registry call (transactions, state reads, event queries) and chain reads;
* **storage** — store ``put``/``get``/``has`` (models and updates);
* **codec** — encoding/decoding model blobs (safetensors);
* **aggregation** — the coordinator's strategy;
* **other** — the rest (agents' bookkeeping, hashing, Python).

The share of chain + storage in round time is the headline (a published blockchain-FL system
reports 5-15 %). ``--profile`` runs one extra configuration under cProfile and lists the top
functions by cumulative time, to name the bottleneck.

Run (from the repository root)::

    python -m benchmarks.overhead                                   # all backends, 50 nodes
    python -m benchmarks.overhead --configs eth-tester:file --rounds 3 --nodes 10
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):                      # `python benchmarks/overhead.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from benchmarks import _common as C
from chainfl.errors import ConfigError

CHAINS = ("eth-tester", "anvil", "ganache")
STORES = ("file", "ipfs")
DEFAULT_CONFIGS = ("eth-tester:file", "anvil:file", "ganache:file", "anvil:ipfs", "eth-tester:ipfs")
CATEGORIES = ("training", "chain", "storage", "codec", "aggregation")


# --- backends ------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def chain_backend(kind: str, workdir: Path):
    """Yield a chain URL: ``eth-tester`` persisted under ``workdir`` or a fresh Ganache/Anvil."""
    if kind == "eth-tester":
        yield "eth-tester://"                         # persisted under the run's home (see run_onchain)
        return
    if kind not in CHAINS:
        raise ConfigError(f"unknown chain {kind!r}; choose one of {', '.join(CHAINS)}")
    from chainfl import config
    from chainfl.chain.nodes import LocalNode

    node = LocalNode(kind, settings=config.load_node_settings(), port=free_port(),
                     log_dir=workdir / f"{kind}-log")
    node.start(timeout=90)
    try:
        yield node.url
    finally:
        node.stop()


@contextlib.contextmanager
def store_backend(kind: str, workdir: Path):
    """Yield a store URL: the embedded store under ``workdir`` or a fresh js-ipfs daemon."""
    if kind == "file":
        yield (workdir / "store").as_uri()
        return
    if kind != "ipfs":
        raise ConfigError(f"unknown store {kind!r}; choose one of {', '.join(STORES)}")
    from chainfl.storage.daemon import IpfsDaemon

    daemon = IpfsDaemon(repo_dir=workdir / "ipfs-repo", api_port=free_port(),
                        gateway_port=free_port(), swarm_port=free_port())
    daemon.start(timeout=120)
    try:
        yield daemon.url
    finally:
        daemon.stop()


# --- the instrumented on-chain run -----------------------------------------------------------

class TxLog:
    """Receipts of every transaction the real chain object sends (wraps ``chain.transact``)."""

    def __init__(self):
        self.ops: list[tuple[str, int]] = []          # (function name, gasUsed)

    def wrap(self, transact):
        def transact_logged(contract_fn, *args, **kwargs):
            receipt = transact(contract_fn, *args, **kwargs)
            name = getattr(contract_fn, "fn_name", None)
            if name is None:
                kind = type(contract_fn).__name__
                name = "deploy" if "Constructor" in kind else kind
            if receipt is not None:
                self.ops.append((str(name), int(receipt["gasUsed"])))
            return receipt
        return transact_logged

    def gas_by_op(self, start: int = 0) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for name, gas in self.ops[start:]:
            row = out.setdefault(name, {"count": 0, "gas": 0})
            row["count"] += 1
            row["gas"] += gas
        return out


def run_onchain(workload: C.Workload, rounds: int, rpc: str | None = None, store: str | None = None,
                *, home: Path | None = None, strategy: str = "fedavg", progress: bool = True) -> dict:
    """FedAvg through chainfl's agents on a real registry + store, timed per round and category.

    ``rpc``/``store`` default to the embedded chain persisted under ``home`` (a temporary
    directory when None) and the embedded store there. Returns a dict: ``first_round_end_s``,
    ``round_s``, ``per_round`` (seconds by category + tx count), ``metrics`` (final test metrics
    at the validation-chosen threshold, as for every other system), ``final_digest``,
    ``gas_by_op``, ``tx_per_round``, ``setup_s``, ``total_s``, ``rpc``, ``store``.
    """
    import chainfl.agents.modelio as modelio
    import chainfl.agents.node as node_module
    from chainfl.agents.coordinator import Coordinator
    from chainfl.agents.node import LocalData, NodeAgent
    from chainfl.agents.reports import MemoryReportBox
    from chainfl.agents.setup import build_spec, open_registry
    from chainfl.aggregation.strategies import Strategy
    from chainfl.chain import connect
    from chainfl.data.scaling import FeatureStats
    from chainfl.errors import AgentError
    from chainfl.storage import open_store

    with contextlib.ExitStack() as stack:
        if home is None:
            home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chainfl-bench-")))
        rpc = rpc or "eth-tester://"
        store_url = store or (home / "store").as_uri()
        timings, txlog = C.Timings(), TxLog()
        for owner, name, category in ((node_module, "train_local", "training"),
                                      (modelio, "encode_model", "codec"),
                                      (modelio, "decode_model", "codec"),
                                      (Strategy, "aggregate", "aggregation")):
            stack.enter_context(C.patched(owner, name, lambda f, c=category: timings.timed(c, f)))

        t0 = time.perf_counter()
        chain = stack.enter_context(connect(rpc, home=home))
        chain.transact = txlog.wrap(chain.transact)                # instance attribute: wraps only
        real_store = open_store(store_url)
        store_p = C.timed_proxy(real_store, timings, "storage", methods=("put", "get", "has", "pin"))

        # nodes hold their raw rows + a slice of the validation split; the spec's scaler is
        # agreed from their statistics (identical to the workload's scaler)
        n = workload.n_nodes
        locals_ = [LocalData(Xk, yk, Xv, yv, tuple(workload.feature_names))
                   for (Xk, yk), (Xv, yv) in zip(workload.raw_parts, workload.raw_val_parts)]
        accounts = [chain.account(i + 1) for i in range(n)]
        spec = build_spec(mode="federated", nodes=[a.address for a in accounts], rounds=rounds,
                          stats=[FeatureStats.compute(d.X, d.feature_names) for d in locals_],
                          hidden=workload.model_cfg.hidden, model_kind=workload.model_cfg.kind,
                          epochs=workload.train_cfg.epochs, batch_size=workload.train_cfg.batch_size,
                          lr=workload.train_cfg.lr, strategy=strategy, gate=False, seed=workload.seed,
                          round_seconds=24 * 3600)
        registry = open_registry(chain, None, deploy=True, admin=chain.accounts[0])
        reg_p = C.timed_proxy(registry, timings, "chain", children={"chain": "chain"})
        box = MemoryReportBox()
        coordinator = Coordinator(reg_p, store_p, chain.accounts[0], reports=box)
        start_block = chain.block_number()
        task_id = coordinator.create_task(spec)
        agents = [NodeAgent(reg_p, store_p, acct, task_id, d, reports=box, start_block=start_block,
                            follower=coordinator.follower)   # one follower per process, as chainfl run
                  for acct, d in zip(accounts, locals_)]
        setup_s = time.perf_counter() - t0
        setup_txs = len(txlog.ops)

        # drive: coordinator opens, every node steps, coordinator finalizes (as chainfl run does)
        round_s, per_round, first_end = [], [], None
        t_round, snap, tx0 = time.perf_counter(), timings.snapshot(), len(txlog.ops)
        names0, counts0 = dict(timings.by_name), dict(timings.calls_by_name)
        mem0 = C.peak_rss_mib()
        budget = 20 * rounds + 50
        for _ in range(budget):
            if coordinator.step() == "done":
                break
            for agent in agents:
                agent.step()
            if coordinator.step() == "finalized":
                now = time.perf_counter()
                spent = timings.since(snap)
                row = {c: spent.get(c, 0.0) for c in CATEGORIES}
                row["wall"] = now - t_round
                row["other"] = row["wall"] - sum(row[c] for c in CATEGORIES)
                row["txs"] = len(txlog.ops) - tx0
                per_round.append(row)
                round_s.append(row["wall"])
                first_end = first_end if first_end is not None else now - t0
                if progress:
                    C.log(f"round {len(round_s)}: {row['wall']:.2f} s, {row['txs']} txs, "
                          + ", ".join(f"{c} {row[c]:.2f}" for c in CATEGORIES))
                t_round, snap, tx0 = time.perf_counter(), timings.snapshot(), len(txlog.ops)
                names_end, counts_end = dict(timings.by_name), dict(timings.calls_by_name)
        else:
            raise AgentError(f"task {task_id} did not close within {budget} steps")
        total_s = time.perf_counter() - t0
        if len(round_s) != rounds:
            raise AgentError(f"task {task_id}: {len(round_s)} rounds finalized, expected {rounds}")

        task = registry.task(task_id)
        final_state, _ = modelio.load_model(real_store, coordinator.follower.history.cid_of(task.head),
                                            task.head, spec)
        metrics = C.final_metrics(workload, final_state)
        return {"rpc": rpc if rpc != "eth-tester://" else "eth-tester (embedded, persisted)",
                "store": "embedded file store" if store_url.startswith("file:") else store_url,
                "chain_kind": chain.kind, "first_round_end_s": first_end, "round_s": round_s,
                "per_round": per_round, "metrics": metrics, "final_digest": "0x" + task.head.hex(),
                "gas_by_op": txlog.gas_by_op(), "setup_gas_by_op": _gas_slice(txlog, 0, setup_txs),
                "round_gas_by_op": _gas_slice(txlog, setup_txs, None), "final_state": final_state,
                "tx_per_round": C.median(r["txs"] for r in per_round), "setup_txs": setup_txs,
                "setup_s": setup_s, "total_s": total_s, "peak_rss_mib": C.peak_rss_mib(),
                "rss_before_rounds_mib": mem0,
                "by_name": {k: v - names0.get(k, 0.0) for k, v in names_end.items()
                            if v - names0.get(k, 0.0) > 0},
                "calls_by_name": {k: v - counts0.get(k, 0) for k, v in counts_end.items()
                                  if v - counts0.get(k, 0) > 0},
                "nodes": n, "rounds": rounds}


def _gas_slice(txlog: TxLog, start: int, end: int | None) -> dict:
    sub = TxLog()
    sub.ops = txlog.ops[start:end]
    return sub.gas_by_op()


def inprocess_reference(workload: C.Workload, rounds: int) -> dict:
    """The same rounds with chainfl's pure functions (no chain, no store), timed by category."""
    from chainfl.learning.models import flatten

    timings = C.Timings()
    train = timings.timed("training", C.local_train)
    state, times, training = workload.initial_state, [], []
    for r in range(1, rounds + 1):
        t, before = time.perf_counter(), timings.snapshot()
        state = C.fedavg_round(workload, state, r, train=train)
        times.append(time.perf_counter() - t)
        training.append(timings.since(before)["training"])
    return {"round_s": times, "training_s": C.median(warm(training)),
            "metrics": C.final_metrics(workload, state), "vector": flatten(state)}


# --- profile -------------------------------------------------------------------------------

def profile_run(workload: C.Workload, rounds: int, rpc: str | None, store: str | None, top: int = 15) -> list[list]:
    """Top functions by cumulative time of one on-chain run under cProfile (chainfl + libraries)."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    run_onchain(workload, rounds, rpc, store, progress=False)
    prof.disable()
    stats = pstats.Stats(prof)
    total = stats.total_tt
    rows = []
    for (file, line, func), (cc, nc, tt, ct, _) in sorted(stats.stats.items(), key=lambda kv: -kv[1][3]):
        where = _short(file)
        if where.startswith("benchmarks/") or func in ("<module>",) or "contextlib" in where:
            continue
        rows.append([f"{where}:{line} {func}", nc, tt, ct, ct / total if total else None])
        if len(rows) >= top:
            break
    return rows


def _short(path: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


# --- report --------------------------------------------------------------------------------

def parse_configs(text: str) -> list[tuple[str, str]]:
    out = []
    for item in (x.strip() for x in text.split(",") if x.strip()):
        chain, _, store = item.partition(":")
        if chain not in CHAINS or store not in STORES:
            raise ConfigError(f"bad config {item!r}: use CHAIN:STORE with CHAIN in {', '.join(CHAINS)} "
                              f"and STORE in {', '.join(STORES)}")
        out.append((chain, store))
    return out


def warm(values):
    return values[1:] if len(values) > 1 else values


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=4, help="rounds per configuration (>= 2)")
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                    help="comma list of CHAIN:STORE (chains: eth-tester, anvil, ganache; stores: file, ipfs)")
    ap.add_argument("--profile", default="eth-tester:file",
                    help="CHAIN:STORE to profile with cProfile (2 rounds), or 'none'")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--max-rows", type=int, default=None, help="subsample the data (smoke tests)")
    ap.add_argument("--results-dir", default=None)
    args = ap.parse_args(argv)
    if args.rounds < 2:
        ap.error("--rounds must be >= 2 (round 1 carries warm-up; medians are over rounds 2..R)")
    try:
        configs = parse_configs(args.configs)
        profile = None if args.profile == "none" else parse_configs(args.profile)[0]
    except ConfigError as e:
        ap.error(str(e))
    import torch

    torch.set_num_threads(args.threads)
    workload = C.federated_workload(args.nodes, "dirichlet", args.alpha, args.seed, args.max_rows)
    C.log(f"workload ready: {workload.description}")
    C.warm_up(workload)
    from chainfl.learning.models import flatten

    ref = inprocess_reference(workload, args.rounds)
    C.log(f"in-process: median {C.median(warm(ref['round_s'])):.3f} s/round")
    runs = []
    with tempfile.TemporaryDirectory(prefix="chainfl-overhead-") as tmp:
        for i, (chain_kind, store_kind) in enumerate(configs):
            work = Path(tmp) / f"{i}-{chain_kind}-{store_kind}"
            work.mkdir()
            C.log(f"{chain_kind} + {store_kind}: starting backends")
            with chain_backend(chain_kind, work) as rpc, store_backend(store_kind, work) as store:
                run = run_onchain(workload, args.rounds, rpc, store, home=work / "home")
            run["config"] = f"{chain_kind} + {store_kind}"
            run["same_model_as_inprocess"] = bool(np.array_equal(flatten(run.pop("final_state")),
                                                                  ref["vector"]))
            runs.append(run)
        prof_rows = []
        if profile is not None:
            C.log(f"profiling {profile[0]} + {profile[1]} (2 rounds)")
            work = Path(tmp) / "profile"
            work.mkdir()
            with chain_backend(profile[0], work) as rpc, store_backend(profile[1], work) as store:
                prof_rows = profile_run(workload, 2, rpc, store)
    path = report(workload, args.rounds, ref, runs, prof_rows, profile, args.results_dir)
    print(path.read_text())
    return 0


def report(workload, rounds, ref, runs, prof_rows, profile, results_dir=None) -> Path:
    base = C.median(warm(ref["round_s"]))
    rows, headline = [], {"nodes": workload.n_nodes, "rounds": rounds,
                          "inprocess_s_per_round": round(base, 4), "configs": {}}
    for run in runs:
        warm_rows = warm(run["per_round"])
        med = {k: C.median(r[k] for r in warm_rows) for k in ("wall", "other", *CATEGORIES)}
        share = (med["chain"] + med["storage"]) / med["wall"]
        rows.append([run["config"], med["wall"], med["training"], med["chain"], med["storage"],
                     med["codec"], med["aggregation"], med["other"], 100 * share,
                     med["wall"] / base, run["tx_per_round"], run["metrics"]["f1"]])
        headline["configs"][run["config"]] = {
            "s_per_round": round(med["wall"], 3), "chain_storage_pct": round(100 * share, 1),
            "training_s": round(med["training"], 3), "chain_s": round(med["chain"], 3),
            "storage_s": round(med["storage"], 3), "x_inprocess": round(med["wall"] / base, 2),
            "tx_per_round": run["tx_per_round"], "f1": round(run["metrics"]["f1"], 4)}
    t1 = C.Table(f"Per round, {workload.n_nodes} nodes, FedAvg on chain (median of rounds 2..{rounds})",
                 ["chain + store", "s/round", "training s", "chain s", "storage s", "codec s",
                  "aggregation s", "other s", "chain+storage %", "× in-process", "txs/round", "final F1"],
                 rows, note=f"In-process reference (same training, no chain/store): {base:.3f} s/round, "
                            f"of which training {ref['training_s']:.3f} s; final F1 "
                            f"{ref['metrics']['f1']:.3f}.")
    # which registry calls cost the most (the chain share broken down)
    name_rows = []
    for run in runs:
        chain_calls = sorted(((k.split(".", 1)[1], v) for k, v in run["by_name"].items()
                              if k.startswith("chain.")), key=lambda kv: -kv[1])[:6]
        calls = run["calls_by_name"]
        per_round_calls = sum(v for k, v in calls.items() if k.startswith("chain.")) / run["rounds"]
        name_rows.append([run["config"], per_round_calls, per_round_calls / run["nodes"], ", ".join(
            f"{k} {v / run['rounds']:.2f} s ({calls['chain.' + k] / run['rounds']:.0f}×)"
            for k, v in chain_calls)])
    t2 = C.Table("Chain time by call (per round, mean over all rounds, set-up excluded)",
                 ["chain + store", "registry/chain calls per round", "per node", "largest: seconds (calls)"],
                 name_rows, digits=1)
    tables = [t1, t2]
    if prof_rows:
        tables.append(C.Table(f"cProfile of {profile[0]} + {profile[1]}, 2 rounds: top functions by "
                              f"cumulative time", ["function", "calls", "own s", "cumulative s",
                                                   "share of run"], prof_rows))
    same = [r["config"] for r in runs if r["same_model_as_inprocess"]]
    bottlenecks = []
    for run in runs:
        warm_rows = warm(run["per_round"])
        med = {k: C.median(r[k] for r in warm_rows) for k in ("other", *CATEGORIES)}
        top = max(med, key=med.get)
        chain_calls = sorted(((k.split(".", 1)[1], v) for k, v in run["by_name"].items()
                              if k.startswith("chain.")), key=lambda kv: -kv[1])[:3]
        reads = ", ".join(k for k, _ in chain_calls)
        headline["configs"][run["config"]]["bottleneck"] = top
        headline["configs"][run["config"]]["top_chain_calls"] = [k for k, _ in chain_calls]
        bottlenecks.append(f"{run['config']}: {top} ({100 * med[top] / C.median(r['wall'] for r in warm_rows):.0f} %"
                           f" of the round)" + (f"; largest chain calls: {reads}" if top == "chain" else ""))
    w = workload.description
    notes = [f"Workload: {w['data']}, {w['train_rows']} training rows over {w['nodes']} nodes "
             f"({w['partition']} α={w['alpha']}), {w['model']}, {w['local']}, seed {w['seed']}.",
             "Round wall time runs from the coordinator opening the round to it finalizing; every node "
             "fetches the global model, trains, stores and submits in between (nodes stepped in turn in "
             "one process, as `chainfl run` does). Set-up (deploy, node registration, task) is excluded.",
             "chain = registry transactions + state reads + event queries made by the agents and the "
             "coordinator; storage = store put/get/has; codec = safetensors encode/decode.",
             f"Final global weights bit-identical to the in-process FedAvg run: "
             f"{', '.join(same) if same else 'none'}.",
             "A published blockchain-FL system reports 5-15 % of round time on chain + storage.",
             "Largest share of round time per configuration (the bottleneck): " + "; ".join(bottlenecks) + "."]
    extra = {"inprocess": {k: v for k, v in ref.items() if k != "vector"},
             "runs": runs}
    return C.write_results("overhead", "Overhead of chain + storage per federated round", tables,
                           headline=headline, notes=notes, results_dir=results_dir, extra=extra)


if __name__ == "__main__":
    sys.exit(main())
