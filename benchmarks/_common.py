"""Helpers every benchmark script may use: provenance, repeats, timing, the shared workload, output.

A results file must let anyone reproduce and judge a number, so each one records the exact
command, the date (UTC), the machine (cores, CPU model, RAM) and the versions of everything that
ran (Python, torch, web3, eth-tester, flwr when installed, the node tools, the chainfl commit).
:func:`write_results` writes ``benchmarks/results/<name>.md`` with that header and a JSON sidecar
``<name>.json`` holding the same tables plus machine-readable headline numbers, which
``benchmarks/summarise.py`` copies into ``benchmarks/README.md``.

Also here: :class:`Timings` + :func:`timed_proxy` (wrap an object so every method call is timed
into a category, without editing the wrapped code), :func:`federated_workload` (the real-data,
50-node Dirichlet workload shared by the Flower comparison, the overhead and the scale benchmarks)
and :func:`fedavg_round` (one in-process FedAvg round with chainfl's own functions).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import threading
import time
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from chainfl.config import REPO_ROOT
from chainfl.errors import ConfigError

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"

#: npm package (under node_modules) -> tool name, read from package.json without starting the tool
NODE_PACKAGES = {"solc": "solcjs", "ganache": "ganache", "@foundry-rs/anvil": "anvil", "ipfs": "jsipfs"}


# --- provenance ------------------------------------------------------------------------------

def utc_now() -> str:
    """The current time as ``YYYY-MM-DD HH:MM UTC``."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def machine_info() -> dict:
    """Cores, CPU model, RAM and OS of this machine (Linux /proc; falls back to platform)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gib = round(int(line.split()[1]) / 1024 ** 2, 1)
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {"cores": os.cpu_count(), "usable_cores": usable, "cpu": cpu, "ram_gib": ram_gib,
            "os": f"{platform.system()} {platform.release()}"}


def _dist_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def git_commit() -> str:
    """``HEAD``'s short hash, with ``+dirty`` when tracked files under chainfl/ or benchmarks/ differ."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                "chainfl", "benchmarks"], cwd=REPO_ROOT, capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


def node_tool_versions() -> dict:
    """Installed versions of the node tools, from their package.json (nothing is started)."""
    from chainfl.tools import node_modules

    out = {}
    for package, tool in NODE_PACKAGES.items():
        manifest = node_modules() / package / "package.json"
        try:
            out[tool] = json.loads(manifest.read_text()).get("version")
        except (OSError, ValueError):
            out[tool] = None
    return out


def versions() -> dict:
    """Versions of Python, the libraries the benchmarks exercise, the node tools and chainfl."""
    import torch

    libs = {name: _dist_version(name) for name in
            ("numpy", "web3", "eth-tester", "py-evm", "safetensors", "scikit-learn", "flwr", "ray")}
    return {"python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            **{k: v for k, v in libs.items() if v is not None},
            **{k: v for k, v in node_tool_versions().items() if v is not None},
            "chainfl": git_commit()}


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that produced a result, as typed from the repository root."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]).resolve() if argv else None
    if script is not None and script.suffix == ".py" and BENCH_DIR in script.parents:
        head = ["python", "-m", "benchmarks." + script.stem]
    else:
        head = ["python"] + argv[:1]
    return " ".join(shlex.quote(a) for a in head + argv[1:])


# --- statistics and timing -------------------------------------------------------------------

def median(values: Iterable[float]) -> float:
    """Median of the values (mean of the two middle ones for an even count); ValueError if empty."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("median of no values")
    return float(statistics.median(values))


def repeat(fn: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    """Call ``fn`` ``repeats`` times; return the wall times (s) and the last return value."""
    if repeats < 1:
        raise ConfigError(f"repeats must be >= 1, got {repeats}")
    times, value = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return times, value


class Timings:
    """Accumulated wall time and call counts per category (thread-safe).

    Nested timed calls count in every category they pass through; :meth:`exclusive` reports a
    category's own time only when the proxies that feed it are not nested in each other.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.by_name: dict[str, float] = defaultdict(float)
        self.calls_by_name: dict[str, int] = defaultdict(int)

    def add(self, category: str, name: str, seconds: float) -> None:
        with self._lock:
            self.seconds[category] += seconds
            self.calls[category] += 1
            self.by_name[f"{category}.{name}"] += seconds
            self.calls_by_name[f"{category}.{name}"] += 1

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self.seconds)

    def since(self, snapshot: dict[str, float]) -> dict[str, float]:
        """Seconds per category accumulated after ``snapshot``."""
        now = self.snapshot()
        return {k: now.get(k, 0.0) - snapshot.get(k, 0.0) for k in set(now) | set(snapshot)}

    def timed(self, category: str, fn: Callable, name: str | None = None) -> Callable:
        """``fn`` wrapped so each call adds its wall time to ``category``."""
        label = name or getattr(fn, "__name__", "call")

        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(category, label, time.perf_counter() - t0)

        wrapper.__wrapped__ = fn
        wrapper.__name__ = label
        return wrapper


class _TimedProxy:
    """Forwards attribute access to a target; public callables come back timed."""

    def __init__(self, target, timings: Timings, category: str, methods: frozenset | None,
                 children: dict | None):
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_timings", timings)
        object.__setattr__(self, "_category", category)
        object.__setattr__(self, "_methods", methods)
        object.__setattr__(self, "_children", dict(children or {}))

    def __getattr__(self, name):
        value = getattr(self._target, name)
        if name in self._children:
            return _TimedProxy(value, self._timings, self._children[name], None, None)
        if callable(value) and not name.startswith("_") and (self._methods is None or name in self._methods):
            return self._timings.timed(self._category, value, name)
        return value

    def __setattr__(self, name, value):
        setattr(self._target, name, value)

    def __repr__(self):
        return f"timed_proxy({self._target!r}, {self._category!r})"


def timed_proxy(target, timings: Timings, category: str, methods: Iterable[str] | None = None,
                children: dict[str, str] | None = None):
    """A stand-in for ``target`` whose public method calls are timed into ``category``.

    Wraps, never edits: the target's own code and state are untouched (attribute writes go
    through to it). ``methods`` limits timing to those names (default: every public callable);
    ``children`` maps attribute names to categories for objects reached through the proxy (e.g.
    ``{"chain": "chain"}``: ``proxy.chain.block_number()`` is timed too). Calls the target makes
    on itself or its own attributes are not re-timed, so nothing is counted twice.
    """
    return _TimedProxy(target, timings, category, None if methods is None else frozenset(methods),
                       children)


class patched:
    """Context manager: replace ``owner.name`` by ``make(original)``, restore it on exit.

    For timing functions other modules call (``patched(node_module, "train_local", lambda f:
    timings.timed("training", f))``) without editing them.
    """

    def __init__(self, owner, name: str, make: Callable[[Callable], Callable]):
        self.owner, self.name, self.make = owner, name, make

    def __enter__(self):
        self.original = getattr(self.owner, self.name)
        setattr(self.owner, self.name, self.make(self.original))
        return self

    def __exit__(self, *exc):
        setattr(self.owner, self.name, self.original)
        return False


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (MiB, from getrusage)."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss   # KiB on Linux
    return round(kib / 1024, 1)


# --- the shared workload ---------------------------------------------------------------------

@dataclass
class Workload:
    """Real data split 60/20/20 (stratified), the training part partitioned over nodes, scaled.

    ``raw_parts``/``raw_val_parts`` are what the on-chain node agents hold (they scale with the
    task's scaler themselves); ``parts``/``X_val``/``X_test`` are scaled with the same scaler.
    """

    parts: list[tuple[np.ndarray, np.ndarray]]      # per node (X [n_k, d] float32 scaled, y [n_k] int64)
    raw_parts: list[tuple[np.ndarray, np.ndarray]]  # the same rows unscaled
    raw_val_parts: list[tuple[np.ndarray, np.ndarray]]  # the validation split cut into n_nodes iid slices
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    feature_names: list[str]
    scaler: Any                                     # chainfl.data.Scaler
    model_cfg: Any                                  # chainfl.learning.models.ModelConfig
    train_cfg: Any                                  # chainfl.learning.train.TrainConfig (seed = workload seed)
    initial_state: "OrderedDict[str, np.ndarray]"
    description: dict = field(default_factory=dict)

    @property
    def n_nodes(self) -> int:
        return len(self.parts)

    @property
    def seed(self) -> int:
        return int(self.description["seed"])

    @property
    def n_features(self) -> int:
        return int(self.X_val.shape[1])

    def node_seed(self, round_: int, node: int) -> int:
        """Local-training seed of ``node`` in ``round_`` (1-based) — the on-chain agents' formula
        (``chainfl.agents.modelio.node_seed``: task seed + 1000 x round + node index), so every
        runner trains exactly the same updates."""
        return self.seed + 1000 * int(round_) + int(node)


def federated_workload(n_nodes: int = 50, scheme: str = "dirichlet", alpha: float = 0.5,
                       seed: int = 0, max_rows: int | None = None, data_path=None) -> Workload:
    """The benchmark workload on the real eth_fraud data (NaN -> 0, no missingness flag).

    1. stratified 60/20/20 train/validation/test split (seeded);
    2. the training rows partitioned over ``n_nodes`` with :func:`chainfl.data.partition`;
    3. each node's feature statistics merged into one :class:`chainfl.data.Scaler` (signed log1p
       + standardise), applied to every split;
    4. model MLP 64-32, local training 1 epoch of Adam 1e-2, batch 64; initial weights seeded
       (``build_model(cfg, d, seed)``, as the coordinator's initial model).

    ``max_rows`` keeps a stratified subsample first (smoke tests); None uses all rows.
    """
    from sklearn.model_selection import train_test_split

    from chainfl.data import load_eth_fraud, partition
    from chainfl.data.scaling import FeatureStats, Scaler
    from chainfl.learning.models import ModelConfig, build_model, get_state
    from chainfl.learning.train import TrainConfig

    data = load_eth_fraud(data_path)
    X, y = data.X, data.y
    if max_rows is not None and max_rows < len(y):
        X, _, y, _ = train_test_split(X, y, train_size=max_rows, stratify=y, random_state=seed)
    X_train, X_rest, y_train, y_rest = train_test_split(X, y, test_size=0.4, stratify=y,
                                                        random_state=seed)
    X_val, X_test, y_val, y_test = train_test_split(X_rest, y_rest, test_size=0.5, stratify=y_rest,
                                                    random_state=seed)
    y_train, y_val, y_test = (a.astype(np.int64) for a in (y_train, y_val, y_test))
    idx = partition(y_train, n_nodes, scheme=scheme, alpha=alpha, seed=seed)
    stats = [FeatureStats.compute(X_train[i], data.feature_names) for i in idx]
    scaler = Scaler.federated(stats)
    raw_parts = [(X_train[i], y_train[i]) for i in idx]
    parts = [(scaler.transform(Xk), yk) for Xk, yk in raw_parts]
    val_idx = np.array_split(np.random.default_rng(seed).permutation(len(y_val)), n_nodes)
    raw_val_parts = [(X_val[np.sort(i)], y_val[np.sort(i)]) for i in val_idx]
    model_cfg = ModelConfig(kind="mlp", hidden=(64, 32))
    train_cfg = TrainConfig(epochs=1, batch_size=64, lr=1e-2, optimizer="adam", seed=seed)
    initial = get_state(build_model(model_cfg, X.shape[1], seed))
    desc = {"data": "eth_fraud (NaN->0)", "rows": int(len(y)), "train_rows": int(len(y_train)),
            "features": int(X.shape[1]), "nodes": n_nodes, "partition": scheme, "alpha": alpha,
            "seed": seed, "model": "MLP 64-32", "local": "1 epoch Adam 1e-2 batch 64"}
    return Workload(parts, raw_parts, raw_val_parts, scaler.transform(X_val), y_val,
                    scaler.transform(X_test), y_test, list(data.feature_names), scaler, model_cfg,
                    train_cfg, initial, desc)


def local_train(workload: Workload, state, node: int, round_: int):
    """Node ``node``'s local training in ``round_`` (1-based): chainfl.learning.train_local."""
    from dataclasses import replace

    from chainfl.learning.train import train_local

    X, y = workload.parts[node]
    cfg = replace(workload.train_cfg, seed=workload.node_seed(round_, node))
    return train_local(workload.model_cfg, state, X, y, cfg)


def warm_up(workload: Workload) -> float:
    """One throw-away local training call, so torch's lazy imports and first-call set-up are not
    charged to whichever system is timed first; returns its seconds."""
    t = time.perf_counter()
    local_train(workload, workload.initial_state, 0, 0)
    return time.perf_counter() - t


def fedavg_round(workload: Workload, state, round_: int, train: Callable | None = None):
    """One in-process FedAvg round over every node; returns the new global state.

    ``train(workload, state, node, round_)`` defaults to :func:`local_train` (pass a timed one to
    measure). Aggregation is :func:`chainfl.aggregation.rules.fedavg` weighted by sample counts.
    """
    from chainfl.aggregation.rules import fedavg
    from chainfl.learning.models import flatten, unflatten

    train = train or local_train
    results = [train(workload, state, k, round_) for k in range(workload.n_nodes)]
    vec = fedavg([flatten(r.state) for r in results], [r.n_samples for r in results])
    return unflatten(vec, state)


def final_metrics(workload: Workload, state) -> dict:
    """F1/PR-AUC/ROC-AUC on the test split at the threshold that maximises F1 on validation."""
    from chainfl.learning.evaluate import evaluate_with_validation

    return evaluate_with_validation(workload.model_cfg, state, workload.X_val, workload.y_val,
                                    workload.X_test, workload.y_test)


# --- output ----------------------------------------------------------------------------------

def fmt(value, digits: int = 3) -> str:
    """A table cell: floats rounded, None as an en dash."""
    if value is None:
        return "–"
    if isinstance(value, float):
        if value != value:
            return "nan"
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence], digits: int = 3) -> str:
    """A GitHub-flavoured markdown table; floats get ``digits`` decimals."""
    if any(len(r) != len(headers) for r in rows):
        raise ValueError("every row needs one cell per header")
    lines = ["| " + " | ".join(str(h) for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(c, digits).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


@dataclass
class Table:
    """A results table: title, headers, rows (cells: str, int, float or None)."""

    title: str
    headers: list[str]
    rows: list[list]
    note: str = ""
    digits: int = 3

    def to_markdown(self) -> str:
        out = [f"## {self.title}", "", markdown_table(self.headers, self.rows, self.digits)]
        if self.note:
            out += ["", self.note]
        return "\n".join(out)


def write_results(name: str, title: str, tables: Sequence[Table], *, headline: dict | None = None,
                  summary: str = "", notes: Sequence[str] = (), command: str | None = None,
                  results_dir: Path | None = None, extra: dict | None = None) -> Path:
    """Write ``<results_dir>/<name>.md`` (+ ``<name>.json``); return the markdown path.

    The markdown starts with the exact command, the date, the machine and the versions; then
    ``summary``, the tables and ``notes``. The JSON holds the same plus ``headline`` (the numbers
    the benchmarks index copies) and ``extra`` (raw measurements).
    """
    results_dir = Path(results_dir) if results_dir is not None else RESULTS_DIR
    results_dir.mkdir(parents=True, exist_ok=True)
    command = command or command_line()
    machine, vers, date = machine_info(), versions(), utc_now()
    parts = [f"# {title}", "",
             f"- command: `{command}`",
             f"- date: {date}",
             f"- machine: {machine['cores']} cores ({machine['usable_cores']} usable), {machine['cpu']}, "
             f"{machine['ram_gib']} GiB RAM, {machine['os']}",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()), ""]
    if summary:
        parts += [summary.strip(), ""]
    for t in tables:
        parts += [t.to_markdown(), ""]
    if notes:
        parts += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    md_path = results_dir / f"{name}.md"
    md_path.write_text("\n".join(parts))
    payload = {"name": name, "title": title, "command": command, "date": date, "machine": machine,
               "versions": vers, "headline": headline or {}, "summary": summary,
               "tables": [{"title": t.title, "headers": t.headers, "rows": t.rows, "note": t.note}
                          for t in tables],
               "notes": list(notes), "extra": extra or {}}
    (results_dir / f"{name}.json").write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    return md_path


def _json_default(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def log(msg: str) -> None:
    """Progress on stderr (stdout stays for results)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
