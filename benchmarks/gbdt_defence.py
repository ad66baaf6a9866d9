"""The gbdt label-consistency screen under label flippers: catch rates vs its small-node rules.

In process, no chain (the protocol of ``benchmarks.models_offline``: eth_fraud, NaN -> 0, 60/20/20,
50 nodes, the default gbdt of ``chainfl.agents.setup.DEFAULT_GBDT``, every round's updates
checked by the validity bounds, then screened). A node with n rows is excluded when its chi^2
per row exceeds ``threshold + size_allowance / sqrt(n)`` and, with ``--small-z z``, ``0.5 + z / sqrt(n)``,
unless n < ``min_rows`` (not screened); allowance 0, min rows 0, z 0 is the flat threshold of the first
measurement. Reported per setting: test F1 (3 seeds), the share
of the flippers' growing-round updates excluded, the share of honest ones excluded.

    python -m benchmarks.gbdt_defence                  # the default screen and trees, ~30 min on one core
    python -m benchmarks.gbdt_defence --quick          # 1 seed, 1 partition (smoke test)
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Sequence

import numpy as np

from chainfl.learning import gbdt as G

from benchmarks._common import Table, command_line, log, write_results
from benchmarks.models_offline import DEFAULT_GBDT, SCREEN, ms, prepare, run_gbdt
from chainfl.agents.setup import DEFAULT_GBDT as JOB_GBDT

DEFAULT_TREES = JOB_GBDT["n_trees"]


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--allowances", type=float, nargs="+", default=[0.0])
    ap.add_argument("--min-rows", type=int, nargs="+", default=[G.ConsistencyScreen().min_rows])
    ap.add_argument("--small-z", type=float, nargs="+", default=[G.ConsistencyScreen().small_z],
                    help="ConsistencyScreen.small_z values: limit >= 0.5 + z / sqrt(rows) (0 = off)")
    ap.add_argument("--trees", type=int, default=DEFAULT_TREES,
                    help=f"trees of the gbdt (default {DEFAULT_TREES}, the default job's)")
    ap.add_argument("--partitions", nargs="+", default=["0.5", "0.1", "iid"], help="Dirichlet alphas and/or iid")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--shares-only", action="store_true",
                    help="no training: how much of each class the flippers hold, per partition and seed "
                         "(written as <name>_shares)")
    ap.add_argument("--name", default="gbdt_defence")
    ap.add_argument("--results-dir", default=None)
    args = ap.parse_args(argv)
    seeds = args.seeds[:1] if args.quick else args.seeds
    partitions = [(("iid", 0.0), "IID") if p == "iid" else (("dirichlet", float(p)), f"α={float(p):g}")
                  for p in args.partitions][:1 if args.quick else None]
    attacks = [("none", 0.0), ("label-flip", 0.2), ("label-flip", 0.3)]
    if args.shares_only:
        return write_shares(args, seeds, partitions, argv)
    cfg = replace(DEFAULT_GBDT, n_trees=8 if args.quick else args.trees)
    rows, raw, headline = [], {}, {}
    for (scheme, alpha), label in partitions:
        splits = [prepare(s, 50, scheme, alpha) for s in seeds]
        clean = [run_gbdt(sp, cfg, eval_every=0) for sp in splits]
        rows.append([label, "none", "no screen", ms(r["f1"] for r in clean), "+0.0", "–", "–", "–"])
        log(rows[-1])
        for attack, frac in attacks:
            for allowance, min_rows, z in [(a, m, z) for m in args.min_rows for a in args.allowances
                                           for z in args.small_z]:
                screen = replace(SCREEN, size_allowance=allowance, min_rows=min_rows, small_z=z)
                res = [run_gbdt(sp, cfg, eval_every=0, attack=attack, fraction=frac, defence="screen", screen=screen)
                       for sp in splits]
                drop = 100 * np.mean([c["f1"] - r["f1"] for c, r in zip(clean, res)])
                exb = [r["excluded_bad"] for r in res if r["excluded_bad"] is not None]
                exh = [r["excluded_honest"] for r in res if r["excluded_honest"] is not None]
                exr = [r["excluded_bad_rows"] for r in res if r["excluded_bad_rows"] is not None]
                name = "none" if frac == 0 else f"{attack} {frac:.0%}"
                rows.append([label, name, f"screen, allowance {allowance:g}, min rows {min_rows}"
                             + (f", small-node z {z:g}" if z else ""), ms(r["f1"] for r in res),
                             f"{-drop:+.1f}", f"{100 * np.mean(exb):.1f} %" if exb else "–",
                             f"{100 * np.mean(exr):.1f} %" if exr else "–",
                             f"{100 * np.mean(exh):.1f} %" if exh else "–"])
                raw[f"{label}/{name}/{allowance:g}/{min_rows}" + (f"/z{z:g}" if z else "")] = [
                    {k: r[k] for k in ("f1", "pr_auc", "excluded_bad", "excluded_bad_rows", "excluded_honest", "n_bad")}
                    for r in res]
                headline[f"f1/{label}/{name}/{allowance:g}/{min_rows}" + (f"/z{z:g}" if z else "")] = float(np.mean([r["f1"] for r in res]))
                log(rows[-1])
    table = Table(f"Label-consistency screen, 50 nodes, default gbdt ({cfg.n_trees} trees, {cfg.rounds()} rounds), "
                  f"threshold {SCREEN.threshold}, warm-up {SCREEN.warmup_rounds} rounds; {len(seeds)} seed(s)",
                  ["partition", "attack", "defence", "F1", "F1 points vs clean unscreened", "flipper updates excluded",
                   "flipper rows excluded", "honest updates excluded"], rows)
    write_results(args.name, "gbdt label-consistency screen vs its small-node rules", [table],
                  headline=headline, extra=raw, command=command_line(argv), results_dir=args.results_dir,
                  notes=["Flippers train on 1 - y. Excluded shares count every growing round (the warm-up's "
                         "unscreened rounds count as not excluded); the bins round is not screened. 'Rows "
                         "excluded' weights each flipper update by the node's rows (a 1-row flipper counts 1, "
                         "a 900-row one 900).",
                         "The protocol on chain (chainfl.aggregation.boosting) runs exactly these bounds and this "
                         f"screen, with the defaults of chainfl.learning.gbdt.ConsistencyScreen ({G.ConsistencyScreen()})."])


def write_shares(args, seeds, partitions, argv) -> None:
    """What a screen that trusts the majority of the rows can do: the share of the fraud and of
    the normal training rows the flippers hold (flipped, those are what they claim of the other
    class). Where flippers hold close to half of a class, the rows themselves no longer say which
    labels are right."""
    from chainfl.aggregation.attacks import choose_malicious

    rows, raw = [], {}
    for (scheme, alpha), label in partitions:
        for frac in (0.2, 0.3):
            for s in seeds:
                sp = prepare(s, 50, scheme, alpha)
                bad = choose_malicious(len(sp.parts), frac, s)
                pos = [int(y.sum()) for _, y in sp.parts]
                neg = [len(y) - p for (_, y), p in zip(sp.parts, pos)]
                bp, bn = sum(pos[k] for k in bad), sum(neg[k] for k in bad)
                raw[f"{label}/{frac:.0%}/{s}"] = {"fraud_share": bp / sum(pos), "normal_share": bn / sum(neg),
                                                 "flipper_rows": [pos[k] + neg[k] for k in bad]}
                rows.append([label, f"{frac:.0%}", s, f"{100 * bp / sum(pos):.1f} % ({bp} of {sum(pos)})",
                             f"{100 * bn / sum(neg):.1f} % ({bn} of {sum(neg)})",
                             " ".join(str(pos[k] + neg[k]) for k in sorted(bad, key=lambda k: -(pos[k] + neg[k])))])
    table = Table("Training rows the flippers hold, 50 nodes (the split and attackers of the runs above)",
                  ["partition", "flippers", "seed", "fraud rows held by flippers", "normal rows held by flippers",
                   "flipper node sizes (rows)"], rows)
    write_results(f"{args.name}_shares", "How much of each class the label flippers hold", [table],
                  headline={k: v["fraud_share"] for k, v in raw.items()}, extra=raw, command=command_line(argv),
                  results_dir=args.results_dir,
                  notes=["A flipper trains on 1 - y: its fraud rows are claimed normal and its normal rows "
                         "fraud. The screen compares a node's labels with the model the included nodes "
                         "grew; when flippers hold close to half of the fraud rows, that model learns "
                         "their labels for those rows and the honest fraud holders are the ones that "
                         "disagree."])


if __name__ == "__main__":
    main()
