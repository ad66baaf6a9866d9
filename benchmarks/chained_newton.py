#!/usr/bin/env python
"""Chained mode with the newton model (PLE logistic regression, one Newton step per pass).

Two parts, both on ``eth_fraud`` (50 nodes, NaN -> 0):

* **offline** (in process, the protocol of ``benchmarks/models_offline.py``: 60/20/20 split,
  threshold on validation): F1 / PR-AUC after each of 5 passes at Dirichlet alpha 0.5, 0.1 and
  IID, 3 seeds; the distance to pooled Newton; under 20 % / 30 % boosted attackers (flipped
  labels, contribution x10) and label flippers: how many handoffs the receivers' check rejects
  (malicious and honest) and the F1. A rejected handoff is dropped, as on chain.
* **chain** (``chainfl run --dataset eth_fraud --mode chained --nodes 50 --rounds 5 --model
  newton --partition dirichlet``, embedded chain and store, the run's own split): F1, rejections,
  audit verdict and wall time, clean and with ``--attack boosted`` (20 %).

    python -m benchmarks.chained_newton [--seeds 0 1 2] [--skip-chain] [--skip-offline]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._common import Table, command_line, log, write_results

PASSES = 5


def _config(sp, max_bins=16, l2=1.0):
    from chainfl.agents.setup import newton_config
    from chainfl.data.scaling import FeatureStats

    names = [f"f{j}" for j in range(sp.parts[0][0].shape[1])]
    return newton_config([FeatureStats.compute(X, names, with_grid=True) for X, _ in sp.parts], max_bins, l2)


def _crafted(new, parent, ref, n):
    """Honest at pass 0 (to get its rows reference), then gradient sums at the edge of
    ``G^T (Z^T Z)^+ G <= n`` pushing every weight toward and past 0, and no curvature (the label
    sums of the rows reference reject most of these)."""
    from chainfl.learning import newton as N

    base = N.pass_base(parent, new)
    d = (4.0 * ref.quarter_gram) @ np.sign(new["w"])
    floor = 1e-9 * max(float(ref.gram_values[-1]), 1.0)
    coords = ref.gram_vectors.T @ d
    energy = float(np.sum(coords ** 2 / np.maximum(ref.gram_values, floor)))
    return dict(new, G=base["G"] + d * np.sqrt(n / energy) * 0.999, H=base["H"].copy())


def _confident(new, parent, ref):
    """A flipper (flipped labels from pass 0 on) that later claims every one of its rows is
    confidently wrong (``p = 1 - y`` for its flipped ``y``, no curvature): the largest residuals
    toward its labels that the rows bound lets through."""
    from chainfl.learning import newton as N

    base = N.pass_base(parent, new)
    return dict(new, G=base["G"] + ref.column_sums - 2.0 * ref.label_sums, H=base["H"].copy())


def run_offline(sp, attack: str = "none", fraction: float = 0.0) -> dict:
    """One chained run over the split's nodes; returns per-pass metrics and the gate's counts."""
    from benchmarks.models_offline import test_metrics
    from chainfl.aggregation.attacks import choose_malicious
    from chainfl.learning import newton as N

    cfg = _config(sp)
    n = len(sp.parts)
    bad = set(choose_malicious(n, fraction, sp.seed)) if attack != "none" else set()
    s = N.init_state(cfg)
    refs = {}                                  # node -> its rows reference (from its accepted pass-0 handoff)
    counts = {"malicious_rejected": 0, "malicious": 0, "honest_rejected": 0, "honest": 0}
    curve = []
    t0 = time.perf_counter()
    for r in range(PASSES):
        for k, (X, y) in enumerate(sp.parts):
            if k in bad and attack == "crafted-ellipsoid":
                new = N.contribute(cfg, s, X, y, r)
                if r > 0 and k in refs:
                    new = _crafted(new, s, refs[k], len(y))
            elif k in bad and attack == "crafted-box":
                new = N.contribute(cfg, s, X, 1 - y, r)
                if r > 0 and k in refs:
                    new = _confident(new, s, refs[k])
            elif k in bad:
                new = N.contribute(cfg, s, X, 1 - y, r)
                if attack == "boosted":
                    base = N.pass_base(s, new)
                    new = dict(new, **{key: base[key] + 10.0 * (new[key] - base[key]) for key in ("G", "H")})
            else:
                new = N.contribute(cfg, s, X, y, r)
            who = "malicious" if k in bad else "honest"
            counts[who] += 1
            if N.check_handoff(cfg, s, new, len(y), r, refs.get(k)) is None:
                if r == 0:
                    refs[k] = N.rows_reference(cfg, s, new, len(y))
                s = new
            else:
                counts[who + "_rejected"] += 1
        m = test_metrics(N.predict_proba(cfg, s, sp.X_val), N.predict_proba(cfg, s, sp.X_test), sp)
        curve.append({"pass": r + 1, "f1": m["f1"], "pr_auc": m["pr_auc"]})
    seconds = time.perf_counter() - t0
    out = {"curve": curve, "f1": curve[-1]["f1"], "pr_auc": curve[-1]["pr_auc"], "seconds": seconds, **counts,
           "width": cfg.width}
    if attack == "none":
        pooled = N.pooled_newton(cfg, sp.X_train, sp.y_train, PASSES)
        out["max_dev_from_pooled"] = float(np.max(np.abs(N.weights(cfg, s) - pooled)))
        from chainfl.storage.codec import encode_model

        out["handoff_bytes"] = len(encode_model(s, {"kind": "handoff", "task": 1, "node": "0x" + "0" * 40, "step": 0}))
        out["weights_bytes"] = cfg.width * 8
    return out


def offline_tables(seeds) -> tuple[list[Table], dict, list]:
    from benchmarks.models_offline import prepare

    settings = [("dirichlet", 0.5, "Dirichlet α=0.5"), ("dirichlet", 0.1, "Dirichlet α=0.1"), ("iid", 0.0, "IID")]
    rows, raw, headline = [], [], {}
    for scheme, alpha, label in settings:
        runs = []
        for seed in seeds:
            r = run_offline(prepare(seed, 50, scheme, alpha))
            runs.append(r)
            raw.append({"partition": label, "seed": seed, **r})
            log(f"offline {label} seed {seed}: F1 {r['f1']:.3f} (passes {[round(c['f1'], 3) for c in r['curve']]})")
        f1s = [[r["curve"][p]["f1"] for r in runs] for p in range(PASSES)]
        rows.append([label] + [_ms(v) for v in f1s] + [_ms([r["pr_auc"] for r in runs]),
                                                       f"{max(r['max_dev_from_pooled'] for r in runs):.1e}"])
        headline[f"f1_{scheme}_{alpha:g}"] = statistics.mean(f1s[-1])
    curve = Table("offline: F1 after each pass (mean ± std over seeds), 50 nodes",
                  ["partition"] + [f"pass {p + 1}" for p in range(PASSES)] + ["PR-AUC @5", "max |w − pooled Newton|"],
                  rows)
    attack_rows = []
    clean = {r["seed"]: r["f1"] for r in raw if r["partition"] == "Dirichlet α=0.5"}
    for attack in ("boosted", "label-flip", "crafted-ellipsoid", "crafted-box"):
        for fraction in (0.2, 0.3):
            runs = [run_offline(prepare(seed, 50, "dirichlet", 0.5), attack, fraction) for seed in seeds]
            for seed, r in zip(seeds, runs):
                raw.append({"partition": "Dirichlet α=0.5", "seed": seed, "attack": attack, "fraction": fraction, **r})
            mal = sum(r["malicious_rejected"] for r in runs), sum(r["malicious"] for r in runs)
            hon = sum(r["honest_rejected"] for r in runs), sum(r["honest"] for r in runs)
            drop = [clean[s] - r["f1"] for s, r in zip(seeds, runs)]
            attack_rows.append([attack, f"{fraction:.0%}", f"{mal[0]}/{mal[1]} ({mal[0] / mal[1]:.1%})",
                                f"{hon[0]}/{hon[1]} ({hon[0] / hon[1]:.1%})", _ms([r["f1"] for r in runs]),
                                f"{-max(drop) * 100:+.1f}" if drop else None])
            log(f"offline {attack} {fraction:.0%}: malicious rejected {mal}, honest rejected {hon}")
            headline[f"{attack}_{int(fraction * 100)}_malicious_rejected"] = mal[0] / mal[1]
            headline[f"{attack}_{int(fraction * 100)}_honest_rejected"] = hon[0] / hon[1]
    attacks = Table("offline: the receivers' check under attack (Dirichlet α=0.5, 5 passes)",
                    ["attack", "attackers", "malicious handoffs rejected", "honest handoffs rejected", "F1",
                     "worst F1 change vs clean (points)"], attack_rows,
                    note="boosted = flipped labels, own gradient/Hessian sums x10 (w and count kept consistent); "
                         "label-flip = flipped labels only; crafted-ellipsoid = honest in pass 0, then gradient sums "
                         "at the edge of G^T (Z^T Z)^+ G <= n pushing every weight toward and past 0, no Hessian (the "
                         "attack the label-sums box now stops); crafted-box = flipped labels from pass 0, then every "
                         "row claimed confidently wrong (residual 1 toward its flipped label, no Hessian): the "
                         "strongest sums the check lets through that we know.")
    first = raw[0]
    headline["handoff_bytes"] = first["handoff_bytes"]
    headline["weights_bytes"] = first["weights_bytes"]
    return [curve, attacks], headline, raw


def chain_table(seeds, nodes: int) -> tuple[Table, dict, list]:
    from chainfl.agents.runner import RunConfig, run_job

    rows, raw = [], []
    with tempfile.TemporaryDirectory(prefix="bench-newton-") as tmp:
        for attack in ("none", "boosted"):
            for seed in seeds:
                os.environ["CHAINFL_HOME"] = str(Path(tmp) / f"home-{seed}-{attack}")
                cfg = RunConfig(mode="chained", nodes=nodes, dataset="eth_fraud", partition="dirichlet", alpha=0.5,
                                model="newton", rounds=PASSES, seed=seed, attack=attack)
                res = run_job(cfg, out=Path(tmp) / f"run-{seed}-{attack}", progress=False)
                d = res.to_dict()
                per = d["per_node"]
                mal = sum(p["rejections_received"] for p in per if p["malicious"]), \
                    sum(p["handoffs"] for p in per if p["malicious"])
                hon = sum(p["rejections_received"] for p in per if not p["malicious"]), \
                    sum(p["handoffs"] for p in per if not p["malicious"])
                audit = d["audit"] or {}
                r = {"seed": seed, "attack": attack, "f1": d["test"]["f1"], "pr_auc": d["test"]["pr_auc"],
                     "malicious_rejected": mal[0], "malicious_handoffs": mal[1], "honest_rejected": hon[0],
                     "honest_handoffs": hon[1], "audit_ok": bool(audit.get("ok")),
                     "findings_on_honest": sum(1 for p in per if not p["malicious"] and
                                               p["address"] in (audit.get("misbehaving") or {})),
                     "seconds": d["timings"]["total"], "training_s": d["timings"].get("training"),
                     "bytes_fetched_by_audit": (audit.get("counts") or {}).get("bytes_fetched"),
                     "passes_f1": [x["f1"] for x in d["rounds"]]}
                raw.append(r)
                log(f"chain {attack} seed {seed}: F1 {r['f1']:.3f}, rejected {mal} / {hon}, "
                    f"audit {'ok' if r['audit_ok'] else 'FAILED'}, {r['seconds']:.0f} s")
                rows.append([attack, seed, r["f1"], r["pr_auc"], " / ".join(f"{v:.3f}" for v in r["passes_f1"]),
                             f"{mal[0]}/{mal[1]}" if attack != "none" else "–", f"{hon[0]}/{hon[1]}",
                             "ok" if r["audit_ok"] else "FAILED", r["findings_on_honest"], r["seconds"]])
    table = Table(f"chainfl run --dataset eth_fraud --mode chained --nodes {nodes} --rounds {PASSES} --model newton "
                  f"--partition dirichlet (α 0.5; embedded chain and store)",
                  ["attack", "seed", "F1", "PR-AUC", "F1 after each pass", "malicious handoffs rejected",
                   "honest handoffs rejected", "audit", "honest nodes with findings", "total s"], rows,
                  note="F1 on the run's own held-out split (20 % of the rows; each node keeps 20 % of its rows "
                       "for validation), threshold from the nodes' signed histograms; --attack boosted makes 20 % "
                       "of the nodes malicious.")
    clean = [r for r in raw if r["attack"] == "none"]
    boosted = [r for r in raw if r["attack"] == "boosted"]
    headline = {"chain_f1_clean": statistics.mean(r["f1"] for r in clean),
                "chain_f1_boosted": statistics.mean(r["f1"] for r in boosted),
                "chain_boosted_rejected": sum(r["malicious_rejected"] for r in boosted) /
                max(1, sum(r["malicious_handoffs"] for r in boosted)),
                "chain_seconds_clean": statistics.mean(r["seconds"] for r in clean)}
    return table, headline, raw


def _ms(values) -> str:
    values = list(values)
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--nodes", type=int, default=50, help="Nodes of the on-chain runs.")
    p.add_argument("--skip-chain", action="store_true")
    p.add_argument("--skip-offline", action="store_true")
    p.add_argument("--name", default="chained_newton")
    p.add_argument("--results-dir", type=Path, default=None)
    args = p.parse_args(argv)
    tables, headline, extra = [], {}, {}
    if not args.skip_offline:
        t, h, raw = offline_tables(args.seeds)
        tables += t
        headline.update(h)
        extra["offline"] = raw
    if not args.skip_chain:
        t, h, raw = chain_table(args.seeds, args.nodes)
        tables.append(t)
        headline.update(h)
        extra["chain"] = raw
    parts = []
    if "f1_dirichlet_0.5" in headline:
        parts.append(f"offline, 5 passes: F1 {headline['f1_dirichlet_0.5']:.3f} at α=0.5, "
                     f"{headline['f1_dirichlet_0.1']:.3f} at α=0.1, {headline['f1_iid_0']:.3f} IID; "
                     f"boosted 20 %: {headline['boosted_20_malicious_rejected']:.1%} of malicious handoffs rejected, "
                     f"{headline['boosted_20_honest_rejected']:.1%} of honest ones; handoff blob "
                     f"{headline['handoff_bytes'] / 1e6:.2f} MB, weights {headline['weights_bytes'] / 1e3:.1f} kB")
    if "chain_f1_clean" in headline:
        parts.append(f"on chain: F1 {headline['chain_f1_clean']:.3f} clean, {headline['chain_f1_boosted']:.3f} with "
                     f"20 % boosted ({headline['chain_boosted_rejected']:.1%} of their handoffs rejected), "
                     f"{headline['chain_seconds_clean']:.0f} s per clean run")
    write_results(args.name, "Chained mode with the newton model", tables, summary="; ".join(parts) + ".",
                  headline=headline, extra=extra, command=command_line(argv), results_dir=args.results_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
