"""The run directory of ``chainfl run``: what was run, what it measured, and plots of it.

Layout (``<CHAINFL_HOME>/runs/<id>/`` or ``--out``)::

    config.json        the resolved RunConfig + backends, registry, task id, versions
    metrics.json       per-round metrics, per-node contributions/flags, final test metrics, timings
    results.json       everything ``chainfl run --json`` prints
    audit.json         the audit of the task from chain events (when chainfl.audit is available)
    loss_f1.png        training loss and test F1 per round
    nodes.png          per-node contributions (samples) and rejections / flags
    eval-chain/        the "new blockchain" (embedded chain: ``eth-tester:///<run>/eval-chain``)
    eval/              its simulation: labels.csv, ledger.csv, simulation.json
    train-simulation/  the training chain's simulation record

Plots use matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import json
from pathlib import Path


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_run_dir(result) -> Path:
    """Write every file of the run directory for a :class:`chainfl.agents.runner.RunResult`."""
    d = Path(result.run_dir)
    d.mkdir(parents=True, exist_ok=True)
    full = result.to_dict()
    _write_json(d / "config.json", {"config": full["config"], "chain": result.chain_url, "store": result.store_url,
                                    "registry": result.registry, "task_id": result.task_id,
                                    "environment": result.data.get("environment", {})})
    _write_json(d / "metrics.json", {"rounds": result.rounds, "per_node": result.per_node, "test": result.test,
                                     "threshold": result.threshold, "timings": result.timings,
                                     "data": result.data})
    if result.audit is not None:
        _write_json(d / "audit.json", result.audit)
    _write_json(d / "results.json", full)
    plot_rounds(result.rounds, d / "loss_f1.png", title=f"task {result.task_id} ({result.config.mode})")
    plot_nodes(result.per_node, d / "nodes.png", mode=result.config.mode)
    return d


def plot_rounds(rounds: list[dict], path: Path, title: str = "") -> Path:
    """Training loss (left axis) and test F1 (right axis) per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    xs = [r["round"] for r in rounds]
    losses = [r.get("loss") for r in rounds]
    f1s = [r.get("f1") for r in rounds]
    ax.plot([x for x, v in zip(xs, losses) if v is not None], [v for v in losses if v is not None],
            "o-", color="tab:blue", label="mean training loss")
    ax.set_xlabel("round")
    ax.set_ylabel("training loss", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(xs, f1s, "s-", color="tab:red", label="test F1")
    ax2.set_ylabel("F1 on test data", color="tab:red")
    ax2.set_ylim(0, 1)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_nodes(per_node: list[dict], path: Path, mode: str = "chained") -> Path:
    """Samples contributed per node (malicious nodes in red) and rejections received / flags."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(6.4, 0.25 * len(per_node) + 2), 5.0), sharex=True)
    xs = [r["node"] for r in per_node]
    malicious = [bool(r.get("malicious")) for r in per_node]
    colors = ["tab:red" if m else "tab:blue" for m in malicious]
    samples = [r.get("samples", 0) for r in per_node]
    ax1.bar(xs, samples, color=colors)
    ax1.set_ylabel("samples claimed")
    positive = sorted(v for v in samples if v > 0)
    if positive and positive[-1] > 10 * positive[len(positive) // 2]:
        ax1.set_yscale("log")              # an inflated claim would flatten every other bar
    ax1.set_title("per-node contributions" + (" (red: malicious)" if any(malicious) else ""))
    bad = [r.get("flags", 0) + r.get("refused", 0) if mode == "federated" else r.get("rejections_received", 0)
           for r in per_node]
    ax2.bar(xs, bad, color=colors)
    ax2.set_ylabel("flagged or refused" if mode == "federated" else "handoffs rejected")
    ax2.set_xlabel("node")
    ax2.set_xticks(xs)
    for label, m in zip(ax2.get_xticklabels(), malicious):   # a node with nothing to show is still marked
        if m:
            label.set_color("tab:red")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
