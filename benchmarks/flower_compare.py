"""chainfl side by side with Flower: the same FedAvg workload, timed in ONE run.

Question 3 of issue 8 (second half): what does a user pay, in wall time and in detection quality,
for running FedAvg with chainfl instead of Flower's simulation? All systems run the same workload
(:func:`benchmarks._common.federated_workload`: real eth_fraud data NaN -> 0, 50 nodes, Dirichlet
alpha = 0.5 over the 60 % training split, MLP 64-32, 1 local epoch of Adam 1e-2 with the same
per-node seeds, FedAvg weighted by sample counts, the same rounds), one after the other in the same
process, so their ratios are measured under the same machine load:

* ``inprocess`` — chainfl's own functions in a plain loop (``chainfl.learning.train_local`` +
  ``chainfl.aggregation.rules.fedavg``): the floor any FL system pays for this workload;
* ``flower`` — Flower 1.42 simulation (Ray backend, ``--actors`` actors of 1 CPU each), legacy
  ``FedAvg`` strategy, clients calling the same ``train_local``;
* ``chain`` — chainfl fully on chain: node agents and coordinator from ``chainfl.agents``, the
  registry on each ``--onchain`` chain (embedded eth-tester by default; Anvil/Ganache started
  here) with every model in its store (embedded by default; a js-ipfs daemon started here), or
  on already-running backends given by ``--rpc``/``--store``. The gas of every transaction of
  the first on-chain run is summed by operation (question 4: a 50-node x 20-round run).

Reported per system: start-up time (process-internal: from the call until round 1 starts),
median wall time per round, final test F1 / PR-AUC at the validation-chosen threshold, and the
ratio of each median to the in-process one.

Flower is installed for this benchmark only (it is not a chainfl dependency)::

    .venv/bin/pip install "flwr[simulation]==1.42.0"

Run (from the repository root)::

    python -m benchmarks.flower_compare                       # 50 nodes, 20 rounds, all systems
    python -m benchmarks.flower_compare --onchain eth-tester:file,anvil:ipfs
    python -m benchmarks.flower_compare --systems inprocess,flower --rounds 5
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

if __package__ in (None, ""):                      # `python benchmarks/flower_compare.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from benchmarks import _common as C
from chainfl.errors import ConfigError

SYSTEMS = ("inprocess", "flower", "chain")
FLOWER_INSTALL = '.venv/bin/pip install "flwr[simulation]==1.42.0"'


class FlowerMissingError(ConfigError):
    """Flower (with its Ray simulation extra) is not installed in this environment."""


@dataclass
class RunResult:
    system: str
    first_round_end_s: float                 # from the call until round 1's aggregate exists
    round_s: list[float]                     # wall time of each round (round 1 first)
    metrics: dict                            # final test metrics
    total_s: float                           # whole call, start-up and shutdown included
    detail: dict = field(default_factory=dict)

    @property
    def warm_rounds(self) -> list[float]:
        """Rounds 2..R (round 1 also pays lazy start-up: Ray actors, torch warm-up, first txs)."""
        return self.round_s[1:] if len(self.round_s) > 1 else self.round_s

    @property
    def median_round_s(self) -> float:
        return C.median(self.warm_rounds)

    @property
    def startup_s(self) -> float:
        """Time to the end of round 1 minus one warm round: what a run pays before it runs."""
        return max(self.first_round_end_s - self.median_round_s, 0.0)


# --- (a) chainfl in process ----------------------------------------------------------------

def run_inprocess(workload: C.Workload, rounds: int) -> RunResult:
    """FedAvg rounds with chainfl's pure functions in one process (no chain, no store)."""
    t0 = time.perf_counter()
    state = workload.initial_state
    times, first_end = [], None
    for r in range(1, rounds + 1):
        t = time.perf_counter()
        state = C.fedavg_round(workload, state, r)
        times.append(time.perf_counter() - t)
        first_end = first_end if first_end is not None else time.perf_counter() - t0
    total = time.perf_counter() - t0
    return RunResult("inprocess", first_end, times, C.final_metrics(workload, state), total,
                     {"_state": state})


# --- (b) Flower simulation -----------------------------------------------------------------

def require_flower():
    """Import flwr + ray or raise :class:`FlowerMissingError` saying how to install them."""
    try:
        import flwr  # noqa: F401
        import ray  # noqa: F401
    except ImportError as e:
        raise FlowerMissingError(
            f"Flower's simulation is not installed ({e}). It is needed for this benchmark only: "
            f"run `{FLOWER_INSTALL}` (or drop 'flower' from --systems)."
        ) from e
    return flwr


_ACTOR_CACHE: dict[str, dict] = {}


def _load_parts(path: str) -> dict:
    """The workload arrays saved by the driver, loaded once per Ray actor process."""
    if path not in _ACTOR_CACHE:
        with np.load(path, allow_pickle=False) as z:
            _ACTOR_CACHE[path] = {k: z[k] for k in z.files}
    return _ACTOR_CACHE[path]


def _flower_client_fn(data_path: str, context):
    """Flower ``client_fn``: a NumPyClient that trains with ``chainfl.learning.train_local``."""
    from flwr.client import NumPyClient

    from chainfl.learning.models import ModelConfig
    from chainfl.learning.train import TrainConfig, train_local

    arrays = _load_parts(data_path)
    node = int(context.node_config["partition-id"])
    names = [str(n) for n in arrays["names"]]
    model_cfg = ModelConfig(kind="mlp", hidden=tuple(int(h) for h in arrays["hidden"]))
    base_seed = int(arrays["seed"])

    class Client(NumPyClient):
        def fit(self, parameters, config):
            round_ = int(config["server_round"])
            state = dict(zip(names, (np.asarray(p, dtype=np.float32) for p in parameters)))
            seed = base_seed + 1000 * round_ + node      # = Workload.node_seed
            cfg = TrainConfig(epochs=1, batch_size=64, lr=1e-2, optimizer="adam", seed=seed)
            res = train_local(model_cfg, state, arrays[f"X{node}"], arrays[f"y{node}"], cfg)
            return [res.state[n] for n in names], res.n_samples, {}

    return Client().to_client()


def _save_parts(workload: C.Workload, directory: Path) -> Path:
    path = directory / "flower_parts.npz"
    arrays = {f"X{k}": X for k, (X, _) in enumerate(workload.parts)}
    arrays.update({f"y{k}": y for k, (_, y) in enumerate(workload.parts)})
    arrays["names"] = np.array(list(workload.initial_state))
    arrays["hidden"] = np.array(workload.model_cfg.hidden)
    arrays["seed"] = np.array(int(workload.description["seed"]))
    np.savez(path, **arrays)
    return path


def run_flower(workload: C.Workload, rounds: int, actors: int = 2) -> RunResult:
    """The same FedAvg rounds in Flower's Ray simulation; times taken inside the strategy."""
    require_flower()
    import logging

    from flwr.client import ClientApp
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server import ServerApp, ServerAppComponents, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.simulation import run_simulation

    from chainfl.learning.models import unflatten  # noqa: F401  (same import cost as chainfl)

    names = list(workload.initial_state)
    n = workload.n_nodes
    marks: dict = {"start": {}, "end": {}, "final": None}

    class TimedFedAvg(FedAvg):
        """Flower's FedAvg, recording when each round starts and when its aggregate exists."""

        def configure_fit(self, server_round, parameters, client_manager):
            marks["start"][server_round] = time.perf_counter()
            return super().configure_fit(server_round, parameters, client_manager)

        def aggregate_fit(self, server_round, results, failures):
            if failures:
                marks.setdefault("failures", []).append(repr(failures[0]))
            params, metrics = super().aggregate_fit(server_round, results, failures)
            marks["end"][server_round] = time.perf_counter()
            marks["clients"] = len(results)
            if params is not None:
                marks["final"] = parameters_to_ndarrays(params)
            return params, metrics

    def server_fn(context):
        strategy = TimedFedAvg(
            fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=n, min_evaluate_clients=0,
            min_available_clients=n, accept_failures=False,
            initial_parameters=ndarrays_to_parameters([workload.initial_state[k] for k in names]),
            on_fit_config_fn=lambda r: {"server_round": r})
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=rounds))

    with tempfile.TemporaryDirectory(prefix="chainfl-flower-") as tmp:
        data_path = _save_parts(workload, Path(tmp))
        # Defined in an importable module, so Ray pickles the client function by reference.
        from benchmarks import flower_compare as module

        client_app = ClientApp(client_fn=partial(module._flower_client_fn, str(data_path)))
        server_app = ServerApp(server_fn=server_fn)
        backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                   "init_args": {"num_cpus": actors, "num_gpus": 0, "logging_level": logging.ERROR,
                                 "log_to_driver": False}}
        t0 = time.perf_counter()
        run_simulation(server_app=server_app, client_app=client_app, num_supernodes=n,
                       backend_config=backend)
        total = time.perf_counter() - t0
    done = sorted(marks["end"])
    if len(done) != rounds or marks["final"] is None or marks.get("failures"):
        raise RuntimeError(f"Flower completed rounds {done} of {rounds} "
                           f"(failures: {marks.get('failures')}); see its log above")
    times = [marks["end"][r] - marks["start"][r] for r in range(1, rounds + 1)]
    final = dict(zip(names, (np.asarray(a, dtype=np.float32) for a in marks["final"])))
    return RunResult("flower", marks["end"][1] - t0, times, C.final_metrics(workload, final), total,
                     {"actors": actors, "clients_per_round": marks["clients"], "_state": final})


# --- (c) chainfl on chain ------------------------------------------------------------------

def run_chain(workload: C.Workload, rounds: int, config: str = "eth-tester:file",
              rpc: str | None = None, store: str | None = None) -> RunResult:
    """FedAvg through the registry + store with chainfl's agents (see benchmarks/overhead.py).

    ``config`` is CHAIN:STORE (backends started here, as in overhead.py); ``rpc``/``store`` URLs
    of already-running backends take precedence over it.
    """
    from benchmarks.overhead import chain_backend, parse_configs, run_onchain, store_backend

    chain_kind, store_kind = parse_configs(config)[0]
    with tempfile.TemporaryDirectory(prefix="chainfl-flower-chain-") as tmp:
        work = Path(tmp)
        with contextlib.ExitStack() as stack:
            rpc = rpc or stack.enter_context(chain_backend(chain_kind, work))
            store = store or stack.enter_context(store_backend(store_kind, work))
            run = run_onchain(workload, rounds, rpc=rpc, store=store, home=work / "home")
    label = f"{chain_kind} + {store_kind}" if config else f"{run['rpc']}, {run['store']}"
    return RunResult("chain", run["first_round_end_s"], run["round_s"], run["metrics"], run["total_s"],
                     {"config": label, "rpc": run["rpc"], "store": run["store"],
                      "tx_per_round": run["tx_per_round"], "setup_s": run["setup_s"],
                      "gas_by_op": run["gas_by_op"], "setup_gas_by_op": run["setup_gas_by_op"],
                      "round_gas_by_op": run["round_gas_by_op"], "final_digest": run["final_digest"],
                      "_state": run["final_state"]})


# --- report --------------------------------------------------------------------------------

LABELS = {"inprocess": "chainfl in-process (no chain)", "flower": "Flower 1.42 simulation (Ray)",
          "chain": "chainfl on chain"}


def report(results: list[RunResult], workload: C.Workload, rounds: int, prep_s: float,
           results_dir=None, name: str = "flower_compare") -> Path:
    base = next((r for r in results if r.system == "inprocess"), None)
    flower = next((r for r in results if r.system == "flower"), None)
    rows, headline = [], {"rounds": rounds, "nodes": workload.n_nodes}
    for r in results:
        ratio = r.median_round_s / base.median_round_s if base else None
        vs_flower = r.median_round_s / flower.median_round_s if flower else None
        label = LABELS[r.system]
        key = r.system
        if r.system == "chain":
            label += f" ({r.detail['config']})"
            key = "chain " + r.detail["config"]
        rows.append([label, r.first_round_end_s, r.startup_s, r.median_round_s, min(r.warm_rounds),
                     max(r.warm_rounds), ratio, vs_flower, r.metrics["f1"], r.metrics["pr_auc"],
                     r.total_s])
        headline[key] = {"startup_s": round(r.startup_s, 3),
                              "first_round_end_s": round(r.first_round_end_s, 3),
                              "median_round_s": round(r.median_round_s, 4),
                              "f1": round(r.metrics["f1"], 4), "pr_auc": round(r.metrics["pr_auc"], 4),
                              "ratio_to_inprocess": None if ratio is None else round(ratio, 3),
                              "ratio_to_flower": None if vs_flower is None else round(vs_flower, 3)}
    table = C.Table(
        f"FedAvg, {workload.n_nodes} nodes, {rounds} rounds, measured side by side in one run",
        ["system", "round 1 done at s", "start-up s", "median s/round", "min s/round",
         "max s/round", "× in-process", "× Flower", "final F1", "final PR-AUC", "total s"], rows,
        note="Per-round figures are over rounds 2..R (round 1 also pays lazy start-up: Ray actors, "
             "torch warm-up, first transactions). start-up = (round 1 done at) − (median round): "
             "Flower's includes starting Ray and its actors, chainfl on chain's the deployment, "
             "task creation and node registration. Ratios are of medians. total s includes "
             "shutdown.")
    tables = [table]
    if base is not None:
        from chainfl.learning.models import flatten

        ref = flatten(base.detail["_state"])
        same_rows = []
        for r in results:
            if r is base:
                continue
            diff = float(np.max(np.abs(flatten(r.detail["_state"]) - ref)))
            same_rows.append([LABELS[r.system] + (f" ({r.detail['config']})" if r.system == "chain" else ""),
                              "yes" if diff == 0.0 else "no", diff])
            headline.setdefault("max_abs_weight_diff_to_inprocess", {})[
                "chain " + r.detail["config"] if r.system == "chain" else r.system] = diff
        if same_rows:
            tables.append(C.Table("Final global weights against the in-process run",
                                  ["system", "bit-identical", "max |Δweight|"], same_rows, digits=8))
    chain_runs = [r for r in results if r.system == "chain"]
    if chain_runs:
        r = chain_runs[0]
        gas = r.detail["gas_by_op"]
        total_gas = sum(v["gas"] for v in gas.values())
        gas_rows = [[op, v["count"], v["gas"], round(v["gas"] / v["count"]), 100 * v["gas"] / total_gas]
                    for op, v in sorted(gas.items(), key=lambda kv: -kv[1]["gas"])]
        gas_rows.append(["total", sum(v["count"] for v in gas.values()), total_gas, None, 100.0])
        tables.append(C.Table(
            f"Gas of the whole on-chain run ({r.detail['config']}): {workload.n_nodes} nodes × {rounds} "
            f"rounds, set-up included", ["operation", "transactions", "gas used", "gas per tx", "% of gas"],
            gas_rows, digits=1,
            note="Summed from every receipt's gasUsed (the chain object's transact is wrapped). "
                 "Set-up = deploy + addNode per node + setCoordinator + createTask; closeTask ends the run."))
        headline["gas_total"] = total_gas
        headline["gas_config"] = r.detail["config"]
        headline["gas_by_op"] = {op: v["gas"] for op, v in gas.items()}
    w = workload.description
    summary = (f"Workload: {w['data']}, {w['rows']} rows ({w['train_rows']} training rows over "
               f"{w['nodes']} nodes, {w['partition']} α={w['alpha']}), {w['features']} features, "
               f"{w['model']}, {w['local']}, FedAvg weighted by samples, seed {w['seed']}. "
               f"Shared preparation (load, split, partition, federated scaler, one warm-up training call "
               f"in this process): {prep_s:.1f} s, not counted in any system's time; Flower's actors "
               f"warm up inside its start-up.")
    notes = ["Every system runs chainfl.learning.train_local with the same per-node seeds on the same "
             "partition, so their final models differ only through aggregation order/rounding (Flower "
             "sums in float32, chainfl in float64) and, on chain, not at all in the learning.",
             "torch uses the thread count in the versions line for the in-process and on-chain runs; "
             "Ray gives each Flower actor 1 CPU (OMP_NUM_THREADS=1). Flower trains on its actors in "
             "parallel (2 processes on 2 cores by default); chainfl's in-process loop and its stepped "
             "on-chain agents train one node after the other in one process.",
             "Reference measured earlier on this machine type (../shared/REFERENCE.md): Flower "
             "0.55-0.60 s/round after a 10-16 s start, bare loop 0.22 s/round."]
    extra = {(f"chain {r.detail['config']}" if r.system == "chain" else r.system):
             {"round_s": r.round_s, "metrics": r.metrics,
              "detail": {k: v for k, v in r.detail.items() if not k.startswith("_")}}
             for r in results}
    return C.write_results(name, "chainfl vs Flower: the same FedAvg workload side by side",
                           tables, headline=headline, summary=summary, notes=notes,
                           results_dir=results_dir, extra=extra)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=20, help="FedAvg rounds (>= 2)")
    ap.add_argument("--alpha", type=float, default=0.5, help="Dirichlet label-skew alpha")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--systems", default=",".join(SYSTEMS),
                    help=f"comma list of {', '.join(SYSTEMS)}")
    ap.add_argument("--actors", type=int, default=2, help="Flower: Ray actors (1 CPU each)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads in this process (default 1, like each Ray actor)")
    ap.add_argument("--onchain", default="eth-tester:file",
                    help="comma list of CHAIN:STORE for the 'chain' system (chains: eth-tester, anvil, "
                         "ganache; stores: file, ipfs; nodes/daemons are started and stopped here)")
    ap.add_argument("--rpc", default=None, help="URL of a running chain for the on-chain run "
                                                "(overrides the CHAIN of --onchain)")
    ap.add_argument("--store", default=None, help="URL of a running store for the on-chain run "
                                                  "(overrides the STORE of --onchain)")
    ap.add_argument("--max-rows", type=int, default=None, help="subsample the data (smoke tests)")
    ap.add_argument("--results-dir", default=None, help="where to write flower_compare.md/.json")
    args = ap.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        ap.error(f"unknown system(s) {unknown}; choose from {', '.join(SYSTEMS)}")
    if args.rounds < 2:
        ap.error("--rounds must be >= 2: round 1 carries start-up, medians are over rounds 2..R")
    if "chain" in systems:
        from benchmarks.overhead import parse_configs

        try:
            parse_configs(args.onchain)
        except ConfigError as e:
            ap.error(str(e))
    if "flower" in systems:
        try:
            require_flower()
        except FlowerMissingError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    import torch

    torch.set_num_threads(args.threads)
    import logging

    logging.getLogger("flwr").setLevel(logging.WARNING)
    t = time.perf_counter()
    workload = C.federated_workload(args.nodes, "dirichlet", args.alpha, args.seed, args.max_rows)
    prep = time.perf_counter() - t
    warm = C.warm_up(workload)
    C.log(f"workload ready in {prep:.1f} s (+ {warm:.1f} s torch warm-up): {workload.description}")
    results = []
    for system in systems:
        C.log(f"running {system} for {args.rounds} rounds")
        if system == "inprocess":
            results.append(run_inprocess(workload, args.rounds))
        elif system == "flower":
            results.append(run_flower(workload, args.rounds, args.actors))
        else:
            for config in [c.strip() for c in args.onchain.split(",") if c.strip()]:
                results.append(run_chain(workload, args.rounds, config, args.rpc, args.store))
        r = results[-1]
        C.log(f"{system}: round 1 done at {r.first_round_end_s:.2f} s, median {r.median_round_s:.3f} s/round, "
              f"F1 {r.metrics['f1']:.3f}")
    path = report(results, workload, args.rounds, prep + warm, args.results_dir)
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
