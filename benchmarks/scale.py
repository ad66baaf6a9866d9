"""How chainfl scales with the number of nodes: 10 / 50 / 200 nodes.

Question 5 of issue 8. For each node count, the benchmark FedAvg workload
(:func:`benchmarks._common.federated_workload`: real eth_fraud data, Dirichlet alpha = 0.5, MLP
64-32, 1 local epoch) runs

* ``inprocess`` — chainfl's pure functions in a loop (no chain, no store): the floor;
* ``flower`` (optional) — Flower 1.42's simulation, 2 Ray actors (see flower_compare.py);
* ``CHAIN:STORE`` — federated on chain through chainfl's node agents and coordinator
  (:func:`benchmarks.overhead.run_onchain`), e.g. ``anvil:file`` (default) or ``eth-tester:file``.

Each (nodes, system) pair runs in its own child process, so the reported peak memory (max RSS
from ``getrusage``) belongs to that pair alone. Reported: median wall time per round (rounds
2..R), seconds per node-round, peak RSS, transactions per round and set-up time (deploy + node
registration + task creation, plus funding of accounts beyond the node's 60 funded ones).

Run (from the repository root)::

    python -m benchmarks.scale                                  # 10, 50, 200 nodes
    python -m benchmarks.scale --nodes 10,50 --systems inprocess,anvil:file,eth-tester:file
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):                      # `python benchmarks/scale.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _common as C
from benchmarks.overhead import chain_backend, parse_configs, store_backend, warm
from chainfl.config import REPO_ROOT
from chainfl.errors import ConfigError

MARK = "SCALE-RESULT "


def measure(nodes: int, system: str, rounds: int, seed: int, max_rows: int | None, threads: int) -> dict:
    """One (nodes, system) measurement in this process; returns a JSON-able dict."""
    import torch

    torch.set_num_threads(threads)
    workload = C.federated_workload(nodes, "dirichlet", 0.5, seed, max_rows)
    C.warm_up(workload)
    rss_data = C.peak_rss_mib()
    if system == "inprocess":
        state, times = workload.initial_state, []
        t0 = time.perf_counter()
        for r in range(1, rounds + 1):
            t = time.perf_counter()
            state = C.fedavg_round(workload, state, r)
            times.append(time.perf_counter() - t)
        out = {"round_s": times, "tx_per_round": 0, "setup_s": 0.0,
               "f1": C.final_metrics(workload, state)["f1"], "total_s": time.perf_counter() - t0}
    elif system == "flower":
        from benchmarks.flower_compare import run_flower

        res = run_flower(workload, rounds, actors=2)
        out = {"round_s": res.round_s, "tx_per_round": 0, "setup_s": res.startup_s,
               "f1": res.metrics["f1"], "total_s": res.total_s}
    else:
        from benchmarks.overhead import run_onchain

        chain_kind, store_kind = parse_configs(system)[0]
        with tempfile.TemporaryDirectory(prefix="chainfl-scale-") as tmp:
            work = Path(tmp)
            with chain_backend(chain_kind, work) as rpc, store_backend(store_kind, work) as store:
                run = run_onchain(workload, rounds, rpc, store, home=work / "home", progress=False)
        out = {"round_s": run["round_s"], "tx_per_round": run["tx_per_round"],
               "setup_s": run["setup_s"], "setup_txs": run["setup_txs"], "f1": run["metrics"]["f1"],
               "total_s": run["total_s"],
               "chain_s": C.median(r["chain"] for r in warm(run["per_round"])),
               "training_s": C.median(r["training"] for r in warm(run["per_round"]))}
    out.update({"nodes": nodes, "system": system, "rounds": rounds,
                "median_round_s": C.median(warm(out["round_s"])),
                "peak_rss_mib": C.peak_rss_mib(), "rss_after_data_mib": rss_data})
    return out


def run_child(nodes: int, system: str, args) -> dict:
    """Run :func:`measure` in a fresh interpreter (own peak RSS); parse its result line."""
    cmd = [sys.executable, "-m", "benchmarks.scale", "--child", f"{nodes}:{system}",
           "--rounds", str(args.rounds), "--seed", str(args.seed), "--threads", str(args.threads)]
    if args.max_rows:
        cmd += ["--max-rows", str(args.max_rows)]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True,
                          timeout=args.timeout)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    raise RuntimeError(f"{nodes} nodes / {system}: child exited {proc.returncode} without a result "
                       f"(its log is above)")


def report(results: list[dict], rounds: int, results_dir=None) -> Path:
    rows, headline = [], {"rounds": rounds, "by_system": {}}
    for r in results:
        rows.append([r["system"], r["nodes"], r["median_round_s"], r["median_round_s"] / r["nodes"],
                     r["tx_per_round"], r.get("chain_s"), r.get("training_s"), r["setup_s"],
                     r["peak_rss_mib"], r["f1"]])
        headline["by_system"].setdefault(r["system"], {})[str(r["nodes"])] = {
            "s_per_round": round(r["median_round_s"], 3), "peak_rss_mib": r["peak_rss_mib"],
            "tx_per_round": r["tx_per_round"]}
    table = C.Table(f"FedAvg rounds by node count (median of rounds 2..{rounds}, one child process per row)",
                    ["system", "nodes", "s/round", "s per node-round", "txs/round", "chain s/round",
                     "training s/round", "set-up s", "peak RSS MiB", "final F1"], rows,
                    note="peak RSS: max resident memory of the child process (data, torch, chain client; "
                         "Anvil, the IPFS daemon and Flower's Ray workers are separate processes, not "
                         "included). set-up for flower: Ray + actors start-up. final F1 is "
                         f"after only {rounds} rounds (not a quality result; see experiments.md).")
    notes = ["Workload: eth_fraud (NaN->0), 60/20/20 stratified split, the training rows over N nodes "
             "(Dirichlet α=0.5, seed as in the command), MLP 64-32, 1 epoch Adam 1e-2 batch 64.",
             "On chain: every node submits one update transaction per round; the coordinator opens and "
             "finalizes (and flags, if screening excludes someone), so txs/round = nodes + 2.",
             "Set-up: registry deployment, node registration (one transaction per node), task creation; "
             "dev accounts beyond those funded at genesis are funded by account 0 first."]
    return C.write_results("scale", "Scale: 10 / 50 / 200 nodes", [table], headline=headline,
                           notes=notes, results_dir=results_dir, extra={"runs": results})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", default="10,50,200", help="comma list of node counts")
    ap.add_argument("--systems", default="inprocess,anvil:file",
                    help="comma list: inprocess, flower and/or CHAIN:STORE (e.g. anvil:file, eth-tester:file)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per measurement (>= 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--max-rows", type=int, default=None, help="subsample the data (smoke tests)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per child process")
    ap.add_argument("--results-dir", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rounds < 2:
        ap.error("--rounds must be >= 2 (medians are over rounds 2..R)")
    if args.child:
        nodes, _, system = args.child.partition(":")
        result = measure(int(nodes), system, args.rounds, args.seed, args.max_rows, args.threads)
        print(MARK + json.dumps(result, default=C._json_default), flush=True)
        return 0
    try:
        sizes = [int(x) for x in args.nodes.split(",") if x.strip()]
        systems = [s.strip() for s in args.systems.split(",") if s.strip()]
        for s in systems:
            if s not in ("inprocess", "flower"):
                parse_configs(s)
        if "flower" in systems:
            from benchmarks.flower_compare import require_flower

            require_flower()
    except (ValueError, ConfigError) as e:
        ap.error(str(e))
    import torch

    torch.set_num_threads(args.threads)          # as in the children (the versions line shows it)
    results = []
    for n in sizes:
        for system in systems:
            C.log(f"{n} nodes, {system}")
            results.append(run_child(n, system, args))
            C.log(f"  {results[-1]['median_round_s']:.3f} s/round, peak {results[-1]['peak_rss_mib']} MiB")
    path = report(results, args.rounds, args.results_dir)
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
