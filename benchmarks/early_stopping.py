#!/usr/bin/env python
"""Early stopping on the nodes' validation reports vs a fixed 100 rounds, federated mlp, per seed.

``chainfl run --dataset eth_fraud --mode federated --nodes 50 --model mlp --partition dirichlet``
without ``--rounds`` (up to 100 rounds, stopped when the mean of the robust validation loss over
5 rounds stops improving on the 5 before by 0.5 %) against ``--rounds 100`` (no stopping): test
F1 / PR-AUC, rounds run and wall time. Embedded chain and store; the audit re-decides the stop.

    python -m benchmarks.early_stopping [--seeds 0 1 2] [--partition dirichlet] [--fixed 100]
    python -m benchmarks.early_stopping --model gbdt --partition iid --fixed 0 --name early_stopping_gbdt
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from benchmarks._common import Table, command_line, log, write_results


def _one(cfg, out: Path) -> dict:
    from chainfl.agents.runner import run_job

    res = run_job(cfg, out=out, progress=False)
    t, audit = res.test, res.audit or {}
    stop = (audit.get("release") or {}).get("stopping")
    return {"f1": t["f1"], "pr_auc": t["pr_auc"], "roc_auc": t["roc_auc"], "seconds": res.timings["total"],
            "rounds": res.data.get("finalized_rounds"), "planned": res.data.get("planned_rounds"),
            "reason": res.data.get("close_reason"), "audit_ok": bool(audit.get("ok")),
            "stop_recomputed": bool(stop and stop.get("stop"))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--partition", default="dirichlet")
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--nodes", type=int, default=50)
    p.add_argument("--fixed", type=int, default=100, help="Rounds of the run without stopping (0: the model's own).")
    p.add_argument("--model", default="mlp", help="mlp | logreg | gbdt")
    p.add_argument("--stop-patience", type=int, default=None, help="(default: the rule's, 5)")
    p.add_argument("--name", default="early_stopping")
    p.add_argument("--results-dir", type=Path, default=None)
    args = p.parse_args(argv)
    from chainfl.agents.runner import RunConfig

    rows, runs = [], []
    with tempfile.TemporaryDirectory(prefix="bench-stop-") as tmp:
        for seed in args.seeds:
            patience = args.stop_patience or 5
            runs_of_seed = (("stopping (default)" if args.model != "gbdt" and patience == 5 else
                             f"stopping (patience {patience})", "stop", None, patience),
                            (f"fixed {args.fixed or 'planned'} rounds", "fixed", args.fixed or None, 0))
            for label, key, rounds, stop in runs_of_seed:
                os.environ["CHAINFL_HOME"] = str(Path(tmp) / f"home-{seed}-{key}")
                cfg = RunConfig(mode="federated", nodes=args.nodes, dataset="eth_fraud", partition=args.partition,
                                alpha=args.alpha, model=args.model, rounds=rounds, seed=seed, stop_patience=stop)
                r = {"seed": seed, "run": label, **_one(cfg, Path(tmp) / f"run-{seed}-{key}")}
                runs.append(r)
                log(f"seed {seed} {label}: F1 {r['f1']:.3f} after {r['rounds']} rounds, {r['seconds']:.0f} s, "
                    f"audit {'ok' if r['audit_ok'] else 'FAILED'}")
                rows.append([seed, label, r["rounds"], r["f1"], r["pr_auc"], r["roc_auc"], r["seconds"],
                             "ok" if r["audit_ok"] else "FAILED",
                             "yes" if r["stop_recomputed"] else "–"])
    by = {label: [r for r in runs if r["run"] == label] for label in dict.fromkeys(r["run"] for r in runs)}
    lines = []
    for label, rs in by.items():
        lines.append(f"{label}: F1 {statistics.mean(x['f1'] for x in rs):.3f} (min {min(x['f1'] for x in rs):.3f}), "
                     f"{statistics.mean(x['rounds'] for x in rs):.0f} rounds, "
                     f"{statistics.mean(x['seconds'] for x in rs):.0f} s mean")
    table = Table(f"chainfl run --dataset eth_fraud --mode federated --nodes {args.nodes} --model {args.model} "
                  f"--partition {args.partition} (alpha {args.alpha}): early stopping vs "
                  f"{'--rounds ' + str(args.fixed) if args.fixed else 'the planned rounds'}",
                  ["seed", "run", "rounds run", "F1", "PR-AUC", "ROC-AUC", "total s", "audit",
                   "stop re-decided by the audit"], rows)
    stopped = next((rs for label, rs in by.items() if label.startswith("stopping")), [])
    write_results(args.name, f"Early stopping on the nodes' validation reports (federated {args.model})", [table],
                  summary="; ".join(lines) + ".",
                  headline={"f1_stopping": statistics.mean(x["f1"] for x in stopped) if stopped else None,
                            "rounds_stopping": statistics.mean(x["rounds"] for x in stopped) if stopped else None},
                  extra={"runs": runs}, command=command_line(argv), results_dir=args.results_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
