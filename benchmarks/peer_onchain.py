#!/usr/bin/env python
"""Peer validation on chain: federated mlp on eth_fraud with and without ``--peer``, under label
flippers and boosted attackers that also invert their peer scores.

Each run is ``chainfl run --dataset eth_fraud --mode federated --model mlp --strategy fedavg
--partition dirichlet --nodes 50 --rounds R [--peer] [--attack KIND --malicious-fraction F]`` on
the embedded chain and store (nodes report to the coordinator in process). Per run: test F1 /
PR-AUC of the release, the share of the malicious nodes' and of the honest nodes' updates that
were left out (FedAvg excludes nothing, so with ``--peer`` every exclusion is the peers'), wall
time per round, the peer evidence per round, and whether the audit re-decided every round.

    python -m benchmarks.peer_onchain [--seeds 0] [--rounds 30] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from benchmarks._common import Table, command_line, log, write_results

SCENARIOS = (("none", 0.0), ("label-flip", 0.2), ("label-flip", 0.3), ("boosted", 0.2))


def _one(job: dict) -> dict:
    from chainfl.agents.runner import RunConfig, run_job

    os.environ["CHAINFL_HOME"] = job["home"]
    cfg = RunConfig(mode="federated", nodes=job["nodes"], dataset="eth_fraud", partition="dirichlet",
                    alpha=job["alpha"], model="mlp", strategy="fedavg", rounds=job["rounds"], seed=job["seed"],
                    stop_patience=0, attack=job["attack"], malicious_fraction=job["fraction"] or 0.2,
                    peer=job["peer"], peer_metric=job["metric"] if job["peer"] else None)
    res = run_job(cfg, out=Path(job["home"]) / "run", progress=False)
    bad = [r for r in res.per_node if r["malicious"]]
    good = [r for r in res.per_node if not r["malicious"]]
    audit = res.audit or {}
    aggregates = audit.get("aggregates") or []
    rounds = len([a for a in aggregates if not a.get("abandoned")])
    return {"seed": job["seed"], "attack": job["attack"], "fraction": job["fraction"], "peer": job["peer"],
            "f1": res.test["f1"], "pr_auc": res.test["pr_auc"],
            "bad_excluded": (sum(r["excluded"] for r in bad) / max(1, sum(r["updates"] for r in bad))) if bad else None,
            "honest_excluded": sum(r["excluded"] for r in good) / max(1, sum(r["updates"] for r in good)),
            "flagged": sum(r["flags"] for r in res.per_node),
            "rounds": rounds, "seconds": res.timings["total"], "training_s": res.timings.get("training"),
            "s_per_round": (res.timings.get("training") or res.timings["total"]) / max(1, rounds),
            "audit_ok": bool(audit.get("ok")), "recomputed": sum(1 for a in aggregates if a.get("match")),
            "peer_reports_per_round": statistics.mean(a.get("peer_reports") or 0 for a in aggregates) if aggregates else 0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--nodes", type=int, default=50)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--metric", choices=["loss", "auc", "auc+loss"], default=None,
                   help="the peer rule's score (--peer-metric; default: the spec default, loss)")
    p.add_argument("--peer-only", action="store_true", help="skip the runs without peers")
    p.add_argument("--name", default="peer_onchain")
    p.add_argument("--results-dir", type=Path, default=None)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-peer-") as tmp:
        jobs = [{"seed": s, "attack": a, "fraction": f, "peer": peer, "rounds": args.rounds, "nodes": args.nodes,
                 "alpha": args.alpha, "metric": args.metric, "home": str(Path(tmp) / f"{s}-{a}-{f}-{int(peer)}")}
                for s in args.seeds for a, f in SCENARIOS for peer in ((True,) if args.peer_only else (False, True))]
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            runs = []
            for r in pool.map(_one, jobs):
                runs.append(r)
                log(f"seed {r['seed']} {r['attack']} {r['fraction']:.0%} peer={r['peer']}: F1 {r['f1']:.3f}, "
                    f"malicious excluded {r['bad_excluded'] if r['bad_excluded'] is None else round(r['bad_excluded'], 3)}, "
                    f"honest excluded {r['honest_excluded']:.3f}, {r['s_per_round']:.1f} s/round, "
                    f"audit {'ok' if r['audit_ok'] else 'FAILED'}")
    clean = {(r["seed"], r["peer"]): r["f1"] for r in runs if r["attack"] == "none"}
    rows = []
    for (a, f) in SCENARIOS:
        for peer in (False, True):
            rs = [r for r in runs if r["attack"] == a and r["fraction"] == f and r["peer"] == peer]
            if not rs:
                continue
            f1 = statistics.mean(r["f1"] for r in rs)
            base = statistics.mean(clean.get((r["seed"], False), clean.get((r["seed"], True))) for r in rs
                                   if (r["seed"], False) in clean or (r["seed"], True) in clean)
            be = [r["bad_excluded"] for r in rs if r["bad_excluded"] is not None]
            rows.append([a if a == "none" else f"{a} {f:.0%}", (f"peer validation ({args.metric or 'loss'})" if peer
                                                                else "none"), f"{f1:.3f}",
                         f"{statistics.mean(r['pr_auc'] for r in rs):.3f}", f"{100 * (f1 - base):+.1f}",
                         f"{100 * statistics.mean(be):.1f} %" if be else "–",
                         f"{100 * statistics.mean(r['honest_excluded'] for r in rs):.1f} %",
                         f"{statistics.mean(r['s_per_round'] for r in rs):.1f}",
                         "ok" if all(r["audit_ok"] for r in rs) else "FAILED",
                         f"{sum(r['recomputed'] for r in rs)}/{sum(r['rounds'] for r in rs)}"])
    table = Table(f"federated mlp (FedAvg), eth_fraud, {args.nodes} nodes, Dirichlet alpha={args.alpha}, "
                  f"{args.rounds} rounds, seeds {args.seeds}; malicious nodes also invert their peer scores",
                  ["attack", "defence", "F1", "PR-AUC",
                   "F1 points vs clean (with peers)" if args.peer_only else "F1 points vs clean (no peer)",
                   "malicious updates excluded", "honest updates excluded", "s / round (training)", "audit",
                   "rounds re-decided by the audit"], rows)
    write_results(args.name, "Peer validation on chain (federated mlp)", [table],
                  summary="Exclusion by peers carries no blame on chain (the updates are 'excluded', not "
                          "flagged); the audit re-decides every round from the signed reports recorded as its "
                          "evidence.",
                  headline={"runs": len(runs)}, extra={"runs": runs}, command=command_line(argv),
                  results_dir=args.results_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
