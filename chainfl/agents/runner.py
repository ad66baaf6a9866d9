"""The in-process runner behind ``chainfl run``: the whole job on one machine, on a real chain.

:func:`run_job` wires the parts and steps the agents deterministically in one process:

1. **data** — simulate labelled activity on a fresh chain (real transactions; a fresh in-memory
   embedded chain by default, the ``--rpc`` node otherwise) and extract account features from its
   blocks; or load
   ``--data CSV --label COL`` / the real ``eth_fraud`` dataset (a seeded, stratified test split is
   held out);
2. **partition** the rows over ``nodes`` node accounts (iid / dirichlet / quantity / blocks); each
   node splits its rows into training and validation slices;
3. **scaler** agreed from the nodes' aggregate statistics (counts, sums, sums of squares);
4. **task** created on the registry by the :class:`Coordinator` (spec + initial model stored);
5. **training** — :class:`NodeAgent` objects (one per account, some malicious under ``attack``) and
   the coordinator are stepped until the task is closed; chained: the node whose turn it is,
   federated: every node once per round; the same code runs in separate processes;
6. **evaluation** on a "new blockchain": a simulation with another seed on an embedded chain
   persisted in the run directory (``chainfl detect`` can re-read it), scored with the release at
   the threshold the nodes' validation histograms chose; per-round loss and F1 too;
7. **audit** of the task from chain events (:func:`chainfl.audit.audit_task`);
8. **run directory** (:mod:`chainfl.agents.rundir`): config, metrics, plots, eval chain, labels,
   audit result.
"""

from __future__ import annotations

import json
import logging
import platform
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from chainfl import __version__, config
from chainfl.agents import modelio
from chainfl.agents.coordinator import Coordinator
from chainfl.agents.node import LocalData, NodeAgent
from chainfl.agents.reports import MemoryReportBox
from chainfl.agents.setup import build_spec, model_for, open_registry, stopping_settings
from chainfl.agents.threshold import merge_histograms, score_histogram, threshold_from_histogram
from chainfl.aggregation.attacks import ATTACKS, AttackConfig, choose_malicious
from chainfl.data.partition import format_summary, partition
from chainfl.errors import AgentError, ConfigError
from chainfl.learning.evaluate import metrics_from_scores, predict_scores

log = logging.getLogger(__name__)

DATASETS = ("simulate", "eth_fraud", "csv")
#: In one process a blob that is not in the store never appears: wait only briefly for it.
IN_PROCESS_FETCH_PATIENCE = 3
#: Wall-clock allowance per planned handoff/round before an in-process run is declared stuck.
DRIVE_SECONDS_PER_STEP = 60


@dataclass(frozen=True)
class RunConfig:
    """Everything ``chainfl run`` does is fixed by these settings (and the backends)."""

    mode: str = "chained"            # "chained" (model travels node to node) or "federated"
    nodes: int = 5                   # node accounts (dev accounts 1..nodes; 0 coordinates)
    rounds: int | None = None        # chained: passes over all nodes (None: 5 newton, 3 networks); federated: rounds (None:
                                     #   what the model needs: gbdt's trees; networks up to 100, stopped early)
    stop_patience: int | None = None  # federated networks: stop after this many rounds without improvement in
                                     #   the nodes' validation reports (None: 5 when rounds is None, else off; 0: off)
    strategy: str = "screened-fedavg"  # federated aggregation strategy (aggregation.STRATEGIES); flags go on chain
    gate: bool = True                # chained: validation gate on incoming models
    partition: str = "iid"           # iid | dirichlet | quantity | blocks
    alpha: float = 0.5               # dirichlet / quantity concentration
    attack: str = "none"             # one of aggregation.attacks.ATTACKS, or several comma-separated (a mix)
    malicious_fraction: float = 0.2  # share of malicious nodes when attack != none
    dataset: str = "simulate"        # simulate | eth_fraud | csv
    data: str | None = None          # CSV path (dataset="csv")
    label: str | None = None         # label column of the CSV
    features: tuple[str, ...] | None = None  # csv/eth_fraud: exactly these features (None: the CSV's features.json, else automatic)
    drop: tuple[str, ...] = ()       # csv/eth_fraud: columns never used as features
    features_file: str | None = None  # csv: features.json of `chainfl data prepare` (None: the one next to the CSV)
    fill: float | None = None        # csv: value for empty feature cells (None: the features.json's, else an error)
    max_rows: int | None = None      # csv: cap on data rows read into memory (None: CsvLimits default, 0: no cap)
    max_bytes: int | None = None     # csv: cap on the file size, bytes (None: CsvLimits default, 0: no cap)
    accounts: int = 400              # simulated accounts on the training-data chain (~60 s embedded)
    eval_accounts: int = 200         # simulated accounts on the new (evaluation) chain
    test_fraction: float = 0.2       # held-out test share for eth_fraud / csv
    val_fraction: float = 0.2        # each node's validation share
    model: str = "auto"              # auto | gbdt | newton | mlp | logreg (auto: model_for(mode, strategy))
    hidden: tuple[int, ...] = (32, 16)
    epochs: int = 2                  # local epochs per visit / round
    batch_size: int = 32
    lr: float = 1e-2
    seed: int = 0
    rpc: str | None = None           # training chain (None: embedded eth-tester:// under CHAINFL_HOME)
    store: str | None = None         # store (None: file:// under CHAINFL_HOME)
    registry: str | None = None      # registry address (None: recorded deployment, else deploy)
    data_rpc: str | None = None      # chain to simulate the training data on (None: the training chain)
    eval_rpc: str | None = None      # a FRESH chain for the evaluation simulation (None: embedded in run dir)
    reuse_data: str | None = None    # a previous run directory: reuse its simulations (no new transactions)
    round_seconds: int = 600         # federated deadline after a round opens
    peer: bool = False               # federated networks: peer validation of every round's updates
    peer_metric: str | None = None   # with peer: the score its rule reads (None: peer_spec's default, loss)

    def __post_init__(self):
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if self.mode not in ("chained", "federated"):
            raise ConfigError(f"unknown mode {self.mode!r}; use chained or federated")
        if not 0.0 <= float(self.val_fraction) <= 0.5:
            raise ConfigError(f"val_fraction must be in [0, 0.5], got {self.val_fraction} (--val-fraction): a "
                              f"node's validation reports may count no more rows than it trains on")
        if self.nodes < 1 or (self.rounds is not None and self.rounds < 1):
            raise ConfigError("nodes and rounds must be >= 1")
        if self.model not in ("auto", "gbdt", "newton", "mlp", "logreg"):
            raise ConfigError(f"unknown model {self.model!r}; use auto, gbdt, newton, mlp or logreg")
        if self.model == "gbdt" and self.mode != "federated":
            raise ConfigError("--model gbdt needs --mode federated (its trees grow from the summed histograms "
                              "of federated rounds); chained mode trains --model newton or mlp")
        if self.model == "newton" and self.mode != "chained":
            raise ConfigError("--model newton takes one Newton step per pass of the model along the chain: use "
                              "--mode chained (federated mode trains --model gbdt)")
        if self.peer and (self.mode != "federated" or self.model_kind in ("gbdt", "newton")):
            raise ConfigError("--peer validates the updates of federated network tasks: use --mode federated with "
                              "--model mlp or logreg (a gbdt task screens its histograms by label consistency)")
        if self.peer_metric is not None and not self.peer:
            raise ConfigError("--peer-metric chooses the score of peer validation: add --peer")
        unknown = [k for k in attack_kinds(self.attack) if k not in ATTACKS]
        if unknown or (len(attack_kinds(self.attack)) > 1 and "none" in attack_kinds(self.attack)):
            raise ConfigError(f"unknown attack {self.attack!r}; use one of {', '.join(ATTACKS)}, or several "
                              f"comma-separated (e.g. copy,inflated,unresolvable,outsider)")
        if self.dataset not in DATASETS:
            raise ConfigError(f"unknown dataset {self.dataset!r}; use one of {', '.join(DATASETS)}")
        if self.dataset == "csv" and not self.data:
            raise ConfigError("--data needs a CSV (with --label COLUMN) or a `chainfl data prepare` directory")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @property
    def model_kind(self) -> str:
        return model_for(self.mode, self.strategy) if self.model == "auto" else self.model


@dataclass
class RunResult:
    """What a run produced (``to_dict`` is what ``--json`` prints)."""

    config: RunConfig
    run_dir: Path
    task_id: int
    registry: str
    chain_url: str
    store_url: str
    release_cid: str
    release_digest: str
    threshold: float
    test: dict                                   # metrics on the new chain / held-out test split
    rounds: list[dict] = field(default_factory=list)
    per_node: list[dict] = field(default_factory=list)
    audit: dict | None = None
    timings: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"config": self.config.to_dict(), "run_dir": str(self.run_dir), "task_id": self.task_id,
                "registry": self.registry, "chain": self.chain_url, "store": self.store_url,
                "release": {"cid": self.release_cid, "digest": self.release_digest, "threshold": self.threshold},
                "test": self.test, "rounds": self.rounds, "per_node": self.per_node,
                "audit": self.audit, "timings": self.timings, "data": self.data}


# --- data --------------------------------------------------------------------------------------
@dataclass
class _Data:
    X: np.ndarray
    y: np.ndarray
    feature_names: tuple[str, ...]
    order: np.ndarray | None
    X_test: np.ndarray
    y_test: np.ndarray
    test_source: str
    info: dict
    parts: list | None = None            # prepared node files: each node's rows (indices into X)


def _prepared(cfg: "RunConfig") -> _Data:
    """The node files of a `chainfl data prepare` directory (node1.csv … nodeN.csv: the
    partition), read exactly as `chainfl node run` reads them, and its test.csv as the test set."""
    import re

    from chainfl.data.datasets import CsvLimits, load_csv
    from chainfl.data.prepare import read_plan

    folder = Path(cfg.data)
    files = sorted(folder.glob("node*.csv"), key=lambda p: int(re.sub(r"\D", "", p.stem) or 0))
    test = folder / "test.csv"
    if not files or not test.exists():
        raise ConfigError(f"{folder} is not a `chainfl data prepare` directory: it needs node1.csv … nodeN.csv "
                          f"and test.csv (make one with `chainfl data prepare ... -o {folder}`)")
    limits = CsvLimits.from_options(cfg.max_bytes, cfg.max_rows)
    sets = []
    for path in files + [test]:
        plan = read_plan(path, label=cfg.label, features=cfg.features, drop=cfg.drop, fill=cfg.fill,
                         features_file=cfg.features_file)
        sets.append(load_csv(path, plan.label, plan.features, drop=plan.drop, id_column=plan.id_column,
                             fill_missing=plan.fill, limits=limits))
    names = [tuple(d.feature_names) for d in sets]
    if len(set(names)) != 1:
        raise ConfigError(f"the files in {folder} have different feature columns; prepare them again")
    X = np.concatenate([np.nan_to_num(np.asarray(d.X, dtype=np.float32)) for d in sets[:-1]])
    y = np.concatenate([d.y for d in sets[:-1]])
    bounds = np.cumsum([0] + [len(d.y) for d in sets[:-1]])
    parts = [np.arange(bounds[i], bounds[i + 1]) for i in range(len(files))]
    info = {"source": str(folder), "rows": int(len(y) + len(sets[-1].y)), "positive_rate": float(np.mean(y)),
            "test_rows": len(sets[-1].y), "features": list(names[0]), "node_files": [str(p) for p in files]}
    return _Data(X, y, names[0], None, np.nan_to_num(np.asarray(sets[-1].X, dtype=np.float32)), sets[-1].y,
                 "test.csv", info, parts)


def _simulated(chain, n_accounts: int, seed: int, progress: bool):
    from chainfl.data.features import extract_features
    from chainfl.data.simulator import simulate

    sim = simulate(chain, n_accounts=n_accounts, seed=seed, progress=progress)
    features = extract_features(chain.w3, sim.from_block, sim.to_block, progress=progress)
    ds = features.dataset(sim.labels)
    return sim, features, ds


def _eval_worker(url: str, n_accounts: int, seed: int, out: str) -> None:
    """Child process: simulate the new chain, save the simulation and the features extracted
    from the chain's blocks (``features.npz``) into ``out``; errors into ``error.txt``."""
    from chainfl.chain import connect

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        with connect(url) as chain:
            sim, _, ds = _simulated(chain, n_accounts, seed, progress=False)
            sim.save(out_dir)
            np.savez(out_dir / "features.npz", X=ds.X, y=ds.y, names=np.array(ds.feature_names),
                     ids=np.array(ds.ids))
    except BaseException as e:      # reported to the parent, which raises it as an AgentError
        (out_dir / "error.txt").write_text(f"{type(e).__name__}: {e}")
        raise


def _start_eval_worker(url: str, n_accounts: int, seed: int, out: Path):
    import multiprocessing

    for stale in ("error.txt", "features.npz"):
        (out / stale).unlink(missing_ok=True)
    proc = multiprocessing.get_context("spawn").Process(target=_eval_worker, args=(url, n_accounts, seed, str(out)),
                                                        name="chainfl-eval-chain", daemon=True)
    proc.start()
    return proc


def _join_eval_worker(proc, out: Path):
    from chainfl.data.datasets import Dataset
    from chainfl.data.simulator import Simulation

    proc.join()
    if (out / "error.txt").exists() or proc.exitcode != 0:
        detail = (out / "error.txt").read_text() if (out / "error.txt").exists() else f"exit code {proc.exitcode}"
        raise AgentError(f"simulating the evaluation chain failed: {detail}")
    with np.load(out / "features.npz") as f:
        ds = Dataset(f["X"], f["y"], [str(n) for n in f["names"]], [str(i) for i in f["ids"]], "new chain")
    return Simulation.load(out), ds


def _stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        test.extend(idx[:int(round(len(idx) * fraction))].tolist())
    mask = np.zeros(len(y), dtype=bool)
    mask[test] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def _reused(cfg: RunConfig, run_dir: Path) -> _Data:
    """Training and evaluation data from a previous run's saved simulations: features are computed
    from each simulation's ledger, which equals extraction from its chain (tested in data/)."""
    from chainfl.data.simulator import Simulation

    src = Path(cfg.reuse_data)
    sim, eval_sim = Simulation.load(src / "train-simulation"), Simulation.load(src / "eval")
    features = sim.ledger_features()
    ds, eval_ds = sim.dataset(features), eval_sim.dataset()
    sim.save(run_dir / "train-simulation")
    eval_sim.save(run_dir / "eval")
    previous = json.loads((src / "metrics.json").read_text()).get("data", {}) if (src / "metrics.json").exists() else {}
    info = {"source": "simulation", "reused_from": str(src), "train_accounts": len(ds.y),
            "train_txs": len(sim.ledger), "train_positive_rate": float(ds.y.mean()),
            "eval_chain": previous.get("eval_chain"), "eval_accounts": len(eval_ds.y), "eval_txs": len(eval_sim.ledger),
            "eval_positive_rate": float(eval_ds.y.mean()), "eval_labels": str(run_dir / "eval" / "labels.csv")}
    return _Data(ds.X, ds.y, tuple(ds.feature_names), features.first_seen(list(ds.ids)), eval_ds.X, eval_ds.y,
                 "new chain", info)


def _load_data(cfg: RunConfig, train_chain, run_dir: Path, progress: bool) -> _Data:
    if cfg.dataset == "simulate" and cfg.reuse_data:
        return _reused(cfg, run_dir)
    if cfg.dataset == "simulate":
        from chainfl.chain import connect

        # the new blockchain: another seed on a fresh chain (by default embedded, in the run
        # directory), simulated in a separate process while this one prepares the training data
        eval_url = cfg.eval_rpc or (run_dir / "eval-chain").as_uri().replace("file://", "eth-tester://")
        t = time.monotonic()
        worker = _start_eval_worker(eval_url, cfg.eval_accounts, cfg.seed + 7919, run_dir / "eval")
        try:
            # a fresh chain for the training data: given, else a fresh in-memory embedded chain when
            # training on the embedded chain (persisting it would only slow the simulation down),
            # else the training node itself
            data_rpc = cfg.data_rpc or ("eth-tester://memory" if train_chain.kind == "eth-tester" else None)
            if data_rpc:
                with connect(data_rpc) as data_chain:
                    sim, features, ds = _simulated(data_chain, cfg.accounts, cfg.seed, progress)
            else:
                sim, features, ds = _simulated(train_chain, cfg.accounts, cfg.seed, progress)
            t_train = time.monotonic() - t
            sim.save(run_dir / "train-simulation")
            eval_sim, eval_ds = _join_eval_worker(worker, run_dir / "eval")
        finally:
            if worker.is_alive():
                worker.terminate()
                worker.join(10)
        t_eval = time.monotonic() - t
        eval_blocks = (eval_sim.from_block, eval_sim.to_block)
        info = {"source": "simulation", "data_chain": data_rpc or train_chain.url,
                "train_accounts": len(ds.y), "train_txs": len(sim.ledger),
                "train_positive_rate": float(ds.y.mean()), "eval_chain": eval_url,
                "eval_blocks": list(eval_blocks), "eval_accounts": len(eval_ds.y),
                "eval_txs": len(eval_sim.ledger), "eval_positive_rate": float(eval_ds.y.mean()),
                "simulate_seconds": round(t_train, 1), "eval_ready_seconds": round(t_eval, 1),
                "eval_labels": str(run_dir / "eval" / "labels.csv")}
        order = features.first_seen(list(ds.ids))
        return _Data(ds.X, ds.y, tuple(ds.feature_names), order, eval_ds.X, eval_ds.y, "new chain", info)
    from chainfl.data.datasets import CsvLimits, load_csv, load_eth_fraud
    from chainfl.data.prepare import read_plan
    from chainfl.errors import DataError

    if cfg.dataset == "csv" and Path(cfg.data).is_dir():
        return _prepared(cfg)

    manifest = None
    if cfg.dataset == "eth_fraud":
        ds = load_eth_fraud()
        unknown = [d for d in cfg.drop if d not in ds.feature_names]
        if unknown:
            raise DataError(f"--drop {unknown}: not features of eth_fraud; its features are {ds.feature_names}")
        if cfg.features is not None or cfg.drop:
            ds = ds.select([f for f in (cfg.features or ds.feature_names) if f not in cfg.drop])
    else:
        plan = read_plan(cfg.data, label=cfg.label, features=cfg.features, drop=cfg.drop, fill=cfg.fill,
                         features_file=cfg.features_file)
        ds = load_csv(cfg.data, plan.label, plan.features, drop=plan.drop, id_column=plan.id_column,
                      fill_missing=plan.fill, limits=CsvLimits.from_options(cfg.max_bytes, cfg.max_rows))
        manifest = plan.manifest
    X = np.nan_to_num(np.asarray(ds.X, dtype=np.float32))
    train_idx, test_idx = _stratified_split(ds.y, cfg.test_fraction, cfg.seed)
    info = {"source": ds.source, "rows": len(ds.y), "positive_rate": float(np.mean(ds.y)),
            "test_rows": len(test_idx), "features": list(ds.feature_names), "features_file": manifest}
    return _Data(X[train_idx], ds.y[train_idx], tuple(ds.feature_names), None, X[test_idx], ds.y[test_idx],
                 "held-out split", info)


# --- attackers ---------------------------------------------------------------------------------
def attack_kinds(attack: str) -> list[str]:
    """``"copy,inflated"`` -> ``["copy", "inflated"]``."""
    return [k.strip() for k in str(attack).split(",") if k.strip()] or ["none"]


def assign_attacks(n_nodes: int, attack: str, fraction: float, seed: int) -> dict[int, str]:
    """node index -> attack kind: ``round(fraction * n_nodes)`` nodes chosen by seed, given the
    listed kinds in turn. A slot given ``outsider`` stands for an extra registered account outside
    the task (that node itself stays honest), so the attackers are ``fraction`` of the node count."""
    kinds = attack_kinds(attack)
    if kinds == ["none"]:
        return {}
    chosen = choose_malicious(n_nodes, fraction, seed)
    return {i: kinds[k % len(kinds)] for k, i in enumerate(chosen)}


def _attack(kind: str, cfg: RunConfig) -> AttackConfig:
    return AttackConfig(kind=kind, fraction=cfg.malicious_fraction, seed=cfg.seed)


# --- the job -------------------------------------------------------------------------------------
def limit_torch_threads(n: int = 1) -> None:
    """Train with ``n`` intra-op threads. The models are tiny: on a loaded 2-core machine torch's
    default thread pool made one local training step ~30x slower (25 s vs 0.8 s, measured)."""
    import torch

    torch.set_num_threads(n)


def default_run_dir(cfg: RunConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return config.home_dir() / "runs" / f"{stamp}-{cfg.mode}-s{cfg.seed}"


def run_job(cfg: RunConfig, out: Path | None = None, *, progress: bool = True) -> RunResult:
    """Run the whole job (see the module docstring); returns the results, writes the run dir."""
    from chainfl.agents import rundir
    from chainfl.chain import connect
    from chainfl.storage import open_store

    limit_torch_threads()
    started = time.monotonic()
    run_dir = config.writable_dir(Path(out) if out else default_run_dir(cfg), "run directory")
    timings: dict[str, float] = {}
    chain_url = cfg.rpc or config.default_rpc()
    store = open_store(cfg.store)
    with connect(chain_url) as chain:
        # 1-3. data, partition, per-node slices and statistics
        t = time.monotonic()
        data = _load_data(cfg, chain, run_dir, progress)
        timings["data"] = time.monotonic() - t
        if cfg.nodes > len(data.y):
            raise ConfigError(f"{cfg.nodes} nodes but only {len(data.y)} training rows; use fewer nodes")
        if data.parts is not None and len(data.parts) != cfg.nodes:
            raise ConfigError(f"{cfg.data} holds {len(data.parts)} node files; pass --nodes {len(data.parts)}")
        parts = data.parts if data.parts is not None else \
            partition(data.y, cfg.nodes, cfg.partition, cfg.alpha, cfg.seed, order=data.order)
        if progress:
            how = "node files" if data.parts is not None else cfg.partition
            print(f"partition ({how}) over {cfg.nodes} nodes:\n{format_summary(parts, data.y)}", file=sys.stderr)
        # prepared node files are split as `chainfl node run` splits them (its default --split-seed 0)
        locals_ = [LocalData.split(data.X[p], data.y[p], data.feature_names, cfg.val_fraction,
                                   0 if data.parts is not None else cfg.seed + i)
                   for i, p in enumerate(parts)]
        accounts = [chain.account(i + 1) for i in range(cfg.nodes)]
        coordinator_account = chain.accounts[0]
        spec = build_spec(mode=cfg.mode, nodes=[a.address for a in accounts], rounds=cfg.rounds,
                          stats=[d.stats(with_grid=cfg.model_kind == "newton") for d in locals_], hidden=cfg.hidden, model_kind=cfg.model_kind,
                          epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, strategy=cfg.strategy,
                          gate=cfg.gate, seed=cfg.seed, round_seconds=cfg.round_seconds,
                          fetch_patience=IN_PROCESS_FETCH_PATIENCE, stopping=stopping_settings(cfg.stop_patience),
                          peer=({} if cfg.peer_metric is None else {"metric": cfg.peer_metric}) if cfg.peer else None)
        attackers = assign_attacks(cfg.nodes, cfg.attack, cfg.malicious_fraction, cfg.seed)
        malicious = sorted(i for i, kind in attackers.items() if kind != "outsider")
        # outsiders: registered members that are not nodes of the task, trying to submit anyway
        outsiders = [chain.account(cfg.nodes + 1 + i) for i in range(sum(k == "outsider" for k in attackers.values()))]

        # 4. the task on chain
        t = time.monotonic()
        registry = open_registry(chain, cfg.registry, deploy=True, admin=coordinator_account)
        box = MemoryReportBox()
        coordinator = Coordinator(registry, store, coordinator_account, reports=box)
        start_block = chain.block_number()
        task_id = coordinator.create_task(spec)
        agents = [NodeAgent(registry, store, acct, task_id, d, reports=box, start_block=start_block,
                            attack=_attack(attackers[i], cfg) if i in malicious else None,
                            follower=coordinator.follower)
                  for i, (acct, d) in enumerate(zip(accounts, locals_))]
        for acct in outsiders:
            if not registry.node(acct).member:
                registry.add_node(acct, coordinator_account)
        intruders = [NodeAgent(registry, store, acct, task_id, None, attack=_attack("outsider", cfg),
                               start_block=start_block, follower=coordinator.follower) for acct in outsiders]
        timings["setup"] = time.monotonic() - t

        # 5. training, stepped deterministically
        t = time.monotonic()
        tracker = _RoundTracker(spec, agents, data, coordinator)
        _drive(cfg, registry, task_id, coordinator, agents + intruders, tracker, progress)
        timings["training"] = time.monotonic() - t

        # 6. evaluation with the release
        release_state, release_meta = modelio.load_model(store, coordinator.release.cid, coordinator.release.digest,
                                                         spec)
        source = str(release_meta.get("source", ""))
        tracker.finish(bytes.fromhex(source[2:]) if source.startswith("0x") else None)
        test = _score(spec, release_state, data, coordinator.threshold)
        test["source"] = data.test_source

        # 7. audit
        t = time.monotonic()
        audit = _audit(chain, registry, store, task_id, start_block)
        timings["audit"] = time.monotonic() - t

        per_node = _per_node(registry, task_id, coordinator, agents, malicious, start_block, intruders)
        timings["total"] = time.monotonic() - started
        result = RunResult(config=cfg, run_dir=run_dir, task_id=task_id, registry=registry.address,
                           chain_url=chain.url, store_url=store.url, release_cid=coordinator.release.cid,
                           release_digest=coordinator.release.hex, threshold=float(coordinator.threshold),
                           test=test, rounds=tracker.rounds, per_node=per_node, audit=audit,
                           timings={k: round(v, 2) for k, v in timings.items()}, data=data.info)
        result.data["model"] = spec.model.get("kind", "mlp")
        result.data["planned_rounds"] = spec.rounds
        result.data["close_reason"] = coordinator.close_reason
        if spec.mode == "federated":
            result.data["finalized_rounds"] = len(coordinator.follower.history.finalized)
        result.data["malicious"] = [accounts[i].address for i in malicious] + [a.address for a in outsiders]
        result.data["attackers"] = {**{accounts[i].address: attackers[i] for i in malicious},
                                    **{a.address: "outsider" for a in outsiders}}
        result.data["environment"] = {"chainfl": __version__, "python": platform.python_version(),
                                      "machine": platform.machine(), "platform": platform.platform()}
    rundir.write_run_dir(result)
    return result


def _drive(cfg, registry, task_id, coordinator, agents, tracker, progress: bool) -> None:
    """Step the coordinator and the agents in turn until the task is closed. Chained: the agent
    whose turn it is; federated: every agent once per pass. A pass in which nobody can act (e.g.
    a blob awaited for the task's fetch patience) sleeps briefly; a task that does not finish
    within a generous wall-clock bound raises."""
    from tqdm import tqdm

    spec = coordinator.spec
    by_address = {a.address.lower(): a for a in agents}
    total = spec.total_handoffs if spec.mode == "chained" else spec.rounds
    bar = tqdm(total=total, unit="handoff" if spec.mode == "chained" else "round", desc="training",
               file=sys.stderr, disable=not progress)
    bound = time.monotonic() + DRIVE_SECONDS_PER_STEP * (spec.total_handoffs + spec.rounds) + 600
    quiet = ("idle", "waiting", "done")
    try:
        while time.monotonic() < bound:
            action = coordinator.step()
            if action == "done":
                return
            busy = action not in quiet
            task = registry.task(task_id)
            if task.mode.name == "CHAINED" and task.seq < spec.total_handoffs:
                agent = by_address.get((task.expected or "").lower())
                if agent is None:
                    raise AgentError(f"task {task_id}: the expected node {task.expected} has no agent here")
                step = agent.step()
                busy = busy or step not in quiet
                if step.endswith("handoff"):
                    bar.update(1)
                    tracker.after_handoff(registry.task(task_id), agent)
            else:
                for agent in agents:
                    busy = agent.step() not in quiet or busy
                ended = coordinator.step()
                busy = busy or ended not in quiet
                if ended == "finalized":
                    bar.update(1)
                    tracker.after_round(registry.task(task_id), coordinator)
            if not busy:
                time.sleep(0.2)
        raise AgentError(f"task {task_id} did not finish in time; check the log")
    finally:
        bar.close()


class _RoundTracker:
    """Per-round metrics: mean reported training loss and F1 of the round's model on the test data
    at the threshold chosen from the nodes' validation histograms (nothing pooled)."""

    def __init__(self, spec, agents, data: _Data, coordinator):
        self.spec, self.agents, self.data, self.coordinator = spec, agents, data, coordinator
        self.rounds: list[dict] = []
        self._seen_handoffs = 0
        self._seen_rejections = 0
        self._pending = None          # chained: (pass, head, losses, extra) until the next node decides on it

    def after_handoff(self, task, agent) -> None:
        """Chained: a pass's model is its last handoff *as the next node decided on it* — the head
        once accepted, the model it was returned to when rejected (never an unchecked head)."""
        n = len(self.spec.nodes)
        history = self.coordinator.follower.history
        self.coordinator.follower.catch_up()
        if self._pending is not None and task.seq > self._pending[4]:
            self._flush(self._decided(self._pending[1]))
        if task.seq % n:
            return
        new = history.handoffs[self._seen_handoffs:]
        rejections = len(history.rejections) - self._seen_rejections
        self._seen_handoffs, self._seen_rejections = len(history.handoffs), len(history.rejections)
        self._pending = (task.seq // n, task.head, [h["lossE6"] / 1e6 for h in new], agent, task.seq,
                         {"rejections": rejections})

    def finish(self, final_digest: bytes | None) -> None:
        """Chained: record the last pass with the model the task ended on (the release's source)."""
        if self._pending is not None:
            self._flush(final_digest if final_digest is not None else self._decided(self._pending[1]))

    def _decided(self, head: bytes) -> bytes:
        history = self.coordinator.follower.history
        if any(h["parent"] == head for h in history.handoffs):
            return head
        for rej in history.rejections:
            if rej["digest"] == head:
                return rej["restored"]
        return head

    def _flush(self, digest: bytes) -> None:
        r, _, losses, agent, _, extra = self._pending
        self._pending = None
        self._losses = losses
        self._record(r, digest, agent, extra)

    def after_round(self, task, coordinator) -> None:
        r = task.round
        info = coordinator.round_log.get(r, {})
        self._losses = [info["mean_loss"]] if info.get("mean_loss") is not None else []
        self._record(r, task.head, self.agents[0], {"flagged": len(info.get("flagged", [])),
                                                     "included": len(info.get("included", []))})
        self._losses = []

    def _record(self, r: int, digest: bytes, agent, extra: dict) -> None:
        self.coordinator.follower.catch_up()
        state = self.coordinator._load(digest)
        cfg = modelio.model_config(self.spec)
        hists = []
        for a in self.agents:
            _, _, Xv, yv = a._scaled
            hists.append(score_histogram(predict_scores(cfg, state, Xv), yv))
        threshold, _ = threshold_from_histogram(merge_histograms(hists))
        m = _score(self.spec, state, self.data, threshold)
        row = {"round": r, "loss": float(np.mean(self._losses)) if self._losses else None,
               "f1": m["f1"], "precision": m["precision"], "recall": m["recall"], "roc_auc": m["roc_auc"],
               "threshold": threshold, "model": "0x" + digest.hex()}
        row.update(extra)
        self.rounds.append(row)
        log.info("round %s: loss %s, F1 %.3f (threshold %.3f) %s", r,
                 "n/a" if row["loss"] is None else f"{row['loss']:.4f}", row["f1"], threshold, extra)


def _score(spec, state, data: _Data, threshold: float) -> dict:
    X = modelio.inputs(spec, data.X_test)
    m = metrics_from_scores(predict_scores(modelio.model_config(spec), state, X), data.y_test, threshold)
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in m.items()}


def _audit(chain, registry, store, task_id: int, start_block: int) -> dict | None:
    try:
        from chainfl.audit import audit_task
    except ImportError:
        log.warning("chainfl.audit is not available; the run is not audited")
        return None
    report = audit_task(chain, registry, store, task_id, from_block=start_block)
    d = report.to_dict()
    d["ok"] = bool(report.ok)
    return d


def _per_node(registry, task_id, coordinator, agents, malicious, start_block, intruders=()) -> list[dict]:
    from chainfl.aggregation.decision import reason_code

    history = coordinator.follower.history
    rows = []
    for i, agent in enumerate(list(agents) + list(intruders)):
        a = agent.address
        outsider = i >= len(agents)
        handoffs = [h for h in history.handoffs if h["node"].lower() == a.lower()]
        subs = [s for r in history.submissions.values() for n, s in r.items() if n.lower() == a.lower()]
        flags = [reason for f in history.flags.values() for n, reason in f.items() if n.lower() == a.lower()]
        rows.append({"node": i, "address": a, "malicious": outsider or i in malicious, "outsider": outsider,
                     "train_rows": 0 if outsider else int(len(agent.data.y)),
                     "val_rows": 0 if outsider else int(len(agent.data.y_val)),
                     "positives": 0 if outsider else int(agent.data.y.sum()),
                     "handoffs": len(handoffs), "updates": len(subs),
                     "samples": int(sum(int(h["samples"]) for h in handoffs + subs)),
                     "rejections_received": sum(1 for r in history.rejections if r["producer"].lower() == a.lower()),
                     "rejections_issued": sum(1 for r in history.rejections if r["node"].lower() == a.lower()),
                     "flags": len(flags), "flag_codes": sorted({reason_code(r) for r in flags}),
                     "refused": sum(1 for x in agent.actions if x == "refused"),
                     "excluded": sum(1 for f in list(history.finalized.values()) + list(history.abandoned.values())
                                     for n in f["excluded"] if n.lower() == a.lower()),
                     "included": sum(1 for f in history.finalized.values()
                                     for n in f["included"] if n.lower() == a.lower())})
    return rows
