#!/usr/bin/env python
"""The default federated gbdt job on chain under label flippers: what the screen flags, what F1 is left.

Each run is ``chainfl run --dataset eth_fraud --mode federated --nodes 50 --partition dirichlet
--alpha A [--attack label-flip --malicious-fraction F] --seed S`` with every other setting at its
default (model auto = gbdt, 116 trees in 120 rounds; strategy screened-fedavg = validity bounds +
label-consistency screen), on the embedded chain and store. Per run: test F1 / PR-AUC of the
release, the share of the flippers' and of the honest nodes' growing-round updates flagged on chain
(the bins round is never screened; the warm-up rounds count as not flagged), wall time, and whether
the audit recomputed every aggregate and found the flags justified.

This is the on-chain counterpart of ``benchmarks.gbdt_defence`` (the same protocol in process).

    python -m benchmarks.gbdt_onchain [--seeds 0 1 2] [--alpha 0.5] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from benchmarks._common import Table, command_line, log, write_results

SCENARIOS = (("none", 0.0), ("label-flip", 0.2), ("label-flip", 0.3))


def _share(rows: list[dict]) -> float | None:
    """Flagged share of the growing-round updates of ``rows`` (one bins-round update per node)."""
    grow = sum(max(0, r["updates"] - 1) for r in rows)
    return sum(r["flags"] for r in rows) / grow if grow else None


def _one(job: dict) -> dict:
    from chainfl.agents.runner import RunConfig, run_job

    os.environ["CHAINFL_HOME"] = job["home"]
    cfg = RunConfig(mode="federated", nodes=job["nodes"], dataset="eth_fraud", partition="dirichlet",
                    alpha=job["alpha"], seed=job["seed"], attack=job["attack"],
                    malicious_fraction=job["fraction"] or 0.2, **({"rounds": job["rounds"]} if job["rounds"] else {}))
    res = run_job(cfg, out=Path(job["home"]) / "run", progress=False)
    bad = [r for r in res.per_node if r["malicious"]]
    good = [r for r in res.per_node if not r["malicious"]]
    audit = res.audit or {}
    aggregates = audit.get("aggregates") or []
    return {"seed": job["seed"], "attack": job["attack"], "fraction": job["fraction"], "model": res.data.get("model"),
            "f1": res.test["f1"], "pr_auc": res.test["pr_auc"],
            "bad_flagged": _share(bad) if bad else None, "honest_flagged": _share(good),
            "bad_nodes_flagged": sum(1 for r in bad if r["flags"]), "bad_nodes": len(bad),
            "honest_nodes_flagged": sum(1 for r in good if r["flags"]),
            "rounds": len(aggregates), "recomputed": sum(1 for a in aggregates if a.get("match")),
            "seconds": res.timings["total"], "audit_ok": bool(audit.get("ok")),
            "audit_findings": len(audit.get("violations") or [])}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--nodes", type=int, default=50)
    p.add_argument("--rounds", type=int, default=0, help="federated rounds (0 = the default job's)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--name", default="gbdt_onchain")
    p.add_argument("--results-dir", type=Path, default=None)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-gbdt-") as tmp:
        jobs = [{"seed": s, "attack": a, "fraction": f, "nodes": args.nodes, "alpha": args.alpha,
                 "rounds": args.rounds, "home": str(Path(tmp) / f"{s}-{a}-{f}")}
                for s in args.seeds for a, f in SCENARIOS]
        runs = []
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            for r in pool.map(_one, jobs):
                runs.append(r)
                log(f"seed {r['seed']} {r['attack']} {r['fraction']:.0%}: F1 {r['f1']:.3f}, flippers flagged "
                    f"{r['bad_flagged'] if r['bad_flagged'] is None else round(r['bad_flagged'], 3)}, honest "
                    f"flagged {r['honest_flagged']:.3f}, {r['seconds']:.0f} s, audit {'ok' if r['audit_ok'] else 'FAILED'}")
    clean = {r["seed"]: r["f1"] for r in runs if r["attack"] == "none"}
    rows = []
    for a, f in SCENARIOS:
        rs = [r for r in runs if r["attack"] == a and r["fraction"] == f]
        f1s = [r["f1"] for r in rs]
        drop = statistics.mean(r["f1"] - clean[r["seed"]] for r in rs if r["seed"] in clean)
        bf = [r["bad_flagged"] for r in rs if r["bad_flagged"] is not None]
        rows.append([a if a == "none" else f"{a} {f:.0%}",
                     f"{statistics.mean(f1s):.3f} ± {statistics.pstdev(f1s):.3f}", f"{min(f1s):.3f}",
                     f"{statistics.mean(r['pr_auc'] for r in rs):.3f}", f"{100 * drop:+.1f}",
                     f"{100 * statistics.mean(bf):.1f} %" if bf else "–",
                     f"{100 * statistics.mean(r['honest_flagged'] for r in rs):.1f} %",
                     f"{sum(r['honest_nodes_flagged'] for r in rs)}",
                     f"{statistics.mean(r['seconds'] for r in rs):.0f}",
                     "ok" if all(r["audit_ok"] for r in rs) else "FAILED",
                     f"{sum(r['recomputed'] for r in rs)}/{sum(r['rounds'] for r in rs)}"])
    table = Table(f"default federated job (gbdt, screened), eth_fraud, {args.nodes} nodes, Dirichlet alpha="
                  f"{args.alpha:g}, seeds {args.seeds}; flippers train on 1 - y",
                  ["attack", "F1", "min F1", "PR-AUC", "F1 points vs clean (same seed)",
                   "flipper updates flagged", "honest updates flagged", "honest nodes ever flagged (all seeds)",
                   "total s", "audit", "aggregates recomputed by the audit"], rows)
    lf20 = [r for r in runs if r["attack"] == "label-flip" and r["fraction"] == 0.2]
    headline = {"runs": len(runs)}
    if lf20:
        headline.update({"lf20_bad_flagged": statistics.mean(r["bad_flagged"] for r in lf20),
                         "lf20_honest_flagged": statistics.mean(r["honest_flagged"] for r in lf20),
                         "lf20_f1": statistics.mean(r["f1"] for r in lf20)})
    write_results(args.name, "The default gbdt job on chain under label flippers", [table],
                  summary="Shares count every growing round of every node (the warm-up's unscreened rounds "
                          "count as not flagged); a flagged update is left out of the sum and recorded as a "
                          "flag on chain, which the audit re-derives from the recorded histograms.",
                  headline=headline, extra={"runs": runs}, command=command_line(argv), results_dir=args.results_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
