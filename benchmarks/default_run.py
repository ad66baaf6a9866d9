#!/usr/bin/env python
"""``chainfl run --dataset eth_fraud --mode federated --nodes 50`` with its defaults, per seed.

What a user who does not tune gets: the default model (auto = gbdt in federated mode, 116 trees
in 120 rounds), the default strategy (screened-fedavg = screened-sum for gbdt), IID partition,
the embedded chain and store, test F1 at the threshold the nodes' validation histograms give.
Wall time is the job's own total (data, setup, training, evaluation, audit).

    python -m benchmarks.default_run [--seeds 0 1 2] [--partition iid]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from benchmarks._common import Table, command_line, log, write_results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--partition", default="iid")
    p.add_argument("--nodes", type=int, default=50)
    p.add_argument("--name", default="default_run")
    p.add_argument("--results-dir", type=Path, default=None)
    args = p.parse_args(argv)
    from chainfl.agents.runner import RunConfig, run_job

    rows, runs = [], []
    with tempfile.TemporaryDirectory(prefix="bench-default-") as tmp:
        for seed in args.seeds:
            os.environ["CHAINFL_HOME"] = str(Path(tmp) / f"home-{seed}")
            cfg = RunConfig(mode="federated", nodes=args.nodes, dataset="eth_fraud", partition=args.partition,
                            seed=seed)
            res = run_job(cfg, out=Path(tmp) / f"run-{seed}", progress=False)
            t = res.test
            runs.append({"seed": seed, "f1": t["f1"], "precision": t["precision"], "recall": t["recall"],
                         "pr_auc": t["pr_auc"], "roc_auc": t["roc_auc"], "seconds": res.timings["total"],
                         "rounds": res.data.get("planned_rounds"), "model": res.data.get("model"),
                         "audit_ok": bool(res.audit and res.audit.get("ok")),
                         "findings_nodes": len((res.audit or {}).get("misbehaving") or {})})
            r = runs[-1]
            log(f"seed {seed}: F1 {r['f1']:.3f}, {r['seconds']:.0f} s, audit {'ok' if r['audit_ok'] else 'FAILED'}")
            rows.append([seed, r["model"], r["rounds"], r["f1"], r["precision"], r["recall"], r["pr_auc"],
                         "ok" if r["audit_ok"] else "FAILED", r["findings_nodes"], r["seconds"]])
    f1s = [r["f1"] for r in runs]
    secs = [r["seconds"] for r in runs]
    summary = (f"F1 mean {statistics.mean(f1s):.3f} (min {min(f1s):.3f}, max {max(f1s):.3f}) over seeds "
               f"{args.seeds}; wall time mean {statistics.mean(secs):.0f} s, max {max(secs):.0f} s on the embedded "
               f"chain and store.")
    table = Table(f"chainfl run --dataset eth_fraud --mode federated --nodes {args.nodes} (defaults; partition "
                  f"{args.partition})", ["seed", "model", "rounds", "F1", "precision", "recall", "PR-AUC", "audit",
                                        "nodes with findings", "total s"], rows)
    write_results(args.name, "The default federated job on the real data", [table], summary=summary,
                  headline={"f1_mean": statistics.mean(f1s), "f1_min": min(f1s), "seconds_max": max(secs)},
                  extra={"runs": runs}, command=command_line(argv), results_dir=args.results_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
