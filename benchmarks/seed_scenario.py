"""The seed's scenario, measured: 50 nodes x 20 chained rounds on Anvil and on the embedded chain,
and federated training with 20 % attackers against a clean run.

Every scenario is one ``chainfl run`` job (:func:`chainfl.agents.runner.run_job`): labelled
activity simulated as real transactions, account features extracted from the blocks, the task
recorded on the registry, agents stepped in process, evaluation on a *new* chain (another seed,
another chain), audit from chain events. Anvil nodes are started here on free ports (one for
training, one for the training data, one for the new chain) and stopped at the end.

    .venv/bin/python benchmarks/seed_scenario.py                       # all scenarios
    .venv/bin/python benchmarks/seed_scenario.py --only chained-anvil  # one
    .venv/bin/python benchmarks/seed_scenario.py --render              # rewrite the .md from saved JSON

Raw results: ``benchmarks/results/seed_scenario.json``; table: ``benchmarks/results/seed_scenario.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
RAW = RESULTS / "seed_scenario.json"
MD = RESULTS / "seed_scenario.md"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Anvils:
    """Fresh Anvil nodes on free ports, stopped on exit."""

    def __init__(self, log_dir: Path):
        self.log_dir, self.nodes = log_dir, []

    def new(self) -> str:
        from chainfl import config
        from chainfl.chain.nodes import LocalNode

        node = LocalNode("anvil", settings=config.load_node_settings(), port=_free_port(), log_dir=self.log_dir)
        node.start(timeout=60)
        self.nodes.append(node)
        return node.url

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for n in self.nodes:
            n.stop()


def scenarios(args) -> dict:
    from chainfl.agents.runner import RunConfig

    # the MLP, as the scenario was measured (results/seed_scenario.md); --model auto would now train
    # newton (chained) and the gbdt (federated)
    chained = RunConfig(mode="chained", nodes=args.nodes, rounds=args.rounds, accounts=args.accounts,
                        eval_accounts=args.eval_accounts, epochs=args.epochs, lr=args.lr, seed=args.seed,
                        partition="iid", model="mlp")
    fed = replace(chained, mode="federated", rounds=args.fed_rounds, strategy="screened-fedavg",
                  epochs=args.fed_epochs, lr=args.fed_lr)
    return {
        "chained-anvil": ("anvil", chained),
        "chained-embedded": ("embedded", chained),
        "federated-clean": ("anvil", fed),
        "federated-attack-robust": ("anvil", replace(fed, attack="boosted", malicious_fraction=0.2)),
        "federated-attack-fedavg": ("anvil", replace(fed, strategy="fedavg", attack="boosted",
                                                     malicious_fraction=0.2)),
        "federated-signflip-robust": ("anvil", replace(fed, attack="sign-flip", malicious_fraction=0.2)),
        "federated-signflip-fedavg": ("anvil", replace(fed, strategy="fedavg", attack="sign-flip",
                                                       malicious_fraction=0.2)),
    }


def run_one(name: str, backend: str, cfg, work: Path, reuse: str | None) -> dict:
    from chainfl.agents.runner import run_job

    with Anvils(work / "logs") as anvils:
        if backend == "anvil":
            cfg = replace(cfg, rpc=anvils.new())
        else:
            os.environ["CHAINFL_HOME"] = str(work / f"home-{name}")   # the embedded default, persisted
            cfg = replace(cfg, rpc="eth-tester://")
        if reuse:
            cfg = replace(cfg, reuse_data=reuse)
        else:
            cfg = replace(cfg, data_rpc=anvils.new(), eval_rpc=anvils.new())
        cfg = replace(cfg, store=(work / f"store-{name}").as_uri())
        started = time.time()
        result = run_job(cfg, out=work / f"run-{name}", progress=True)
        out = result.to_dict()
        out["wall_seconds"] = round(time.time() - started, 1)
        out["backend"] = backend
        return out


def environment() -> dict:
    import importlib.metadata as md

    from chainfl.tools import find_tool

    def version(pkg):
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return "?"

    try:
        import subprocess

        anvil = subprocess.run([str(find_tool("anvil")), "--version"], capture_output=True, text=True,
                               timeout=30).stdout.strip().splitlines()[0]
    except Exception as e:   # the table says so instead of failing
        anvil = f"unknown ({e})"
    return {"date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "python": platform.python_version(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
            "load_average": os.getloadavg(), "torch": version("torch"), "web3": version("web3"),
            "eth-tester": version("eth-tester"), "py-evm": version("py-evm"), "anvil": anvil,
            "chainfl": version("chainfl")}


def _f(v, nd=3):
    return "n/a" if v is None else f"{v:.{nd}f}"


def render(raw: dict) -> str:
    lines = ["# Seed scenario: 50 nodes x 20 chained rounds, and federated training under attack", "",
             "Measured by `benchmarks/seed_scenario.py` (command per scenario below). Each scenario is one",
             "`chainfl run` job: labelled activity simulated as real transactions on a chain, account features",
             "extracted from its blocks, partitioned over the nodes, trained with the registry recording every",
             "step, evaluated on a **new chain** (simulation with another seed on another chain) at the",
             "threshold chosen from the nodes' validation-score histograms, then audited from chain events.", ""]
    for name, r in raw.get("scenarios", {}).items():
        env = r.get("environment", {})
        c, t, d = r["config"], r["test"], r["data"]
        rounds = r["rounds"]
        lines += [f"## {name}", "",
                  f"- command: `{r.get('command', '')}`",
                  f"- date: {env.get('date_utc')}; machine: {env.get('machine')}; load average at start "
                  f"{tuple(round(x, 1) for x in env.get('load_average', ()))} (the machine was shared)",
                  f"- versions: chainfl {env.get('chainfl')}, python {env.get('python')}, torch {env.get('torch')}, "
                  f"web3 {env.get('web3')}, eth-tester {env.get('eth-tester')}, py-evm {env.get('py-evm')}, "
                  f"{env.get('anvil')}",
                  f"- training chain: {r['backend']} (`{r['chain']}`); mode {c['mode']}"
                  + (f", strategy {c['strategy']}" if c["mode"] == "federated" else ", validation gate on")
                  + f"; {c['nodes']} nodes x {c['rounds']} rounds; {c['epochs']} local epoch(s), lr {c['lr']}; "
                  + f"attack {c['attack']}"
                  + (f" ({len(d.get('malicious', []))} malicious nodes)" if c["attack"] != "none" else ""),
                  f"- data: {d.get('train_accounts')} simulated accounts / {d.get('train_txs')} transactions for "
                  f"training ({_f(d.get('train_positive_rate'), 2)} positive); new chain: {d.get('eval_accounts')} "
                  f"accounts / {d.get('eval_txs')} transactions" + (f"; simulations reused from an earlier run"
                                                                      if d.get("reused_from") else ""),
                  "", "| metric | value |", "|---|---|",
                  f"| F1 on the new chain | **{_f(t['f1'])}** |",
                  f"| precision / recall | {_f(t['precision'])} / {_f(t['recall'])} |",
                  f"| ROC-AUC / PR-AUC | {_f(t.get('roc_auc'))} / {_f(t.get('pr_auc'))} |",
                  f"| threshold (from node histograms) | {_f(r['release']['threshold'], 4)} |",
                  f"| mean training loss, first -> last round | {_f(rounds[0]['loss'] if rounds else None)} -> "
                  f"{_f(rounds[-1]['loss'] if rounds else None)} |",
                  f"| F1 on the new chain, first -> last round | {_f(rounds[0]['f1'] if rounds else None)} -> "
                  f"{_f(rounds[-1]['f1'] if rounds else None)} |",
                  f"| rejections (chained) / flags (federated) on chain | "
                  f"{sum(n['rejections_received'] for n in r['per_node'])} / {sum(n['flags'] for n in r['per_node'])} |",
                  f"| ... of which on malicious nodes | "
                  f"{sum(n['rejections_received'] + n['flags'] for n in r['per_node'] if n['malicious'])} |",
                  f"| audit | {'ok' if (r.get('audit') or {}).get('ok') else 'FAILED' if r.get('audit') else 'not run'} |",
                  f"| time: data / setup / training / audit / total (s) | "
                  f"{r['timings'].get('data')} / {r['timings'].get('setup')} / {r['timings'].get('training')} / "
                  f"{r['timings'].get('audit')} / {r['timings'].get('total')} |", ""]
        if rounds:
            lines += ["<details><summary>per round</summary>", "", "| round | loss | F1 | threshold | extra |",
                      "|---|---|---|---|---|"]
            for row in rounds:
                extra = {k: row[k] for k in ("rejections", "flagged", "included") if k in row}
                lines.append(f"| {row['round']} | {_f(row['loss'])} | {_f(row['f1'])} | {_f(row['threshold'], 4)} | {extra} |")
            lines += ["", "</details>", ""]
    for note in raw.get("notes", []):
        lines += [note, ""]
    comp = raw.get("comparison")
    if comp:
        lines += ["## Federated, 20 % attackers: summary", "", comp, "",
                  "Boosted = model replacement: the attacker trains on flipped labels and submits",
                  "reference + 10 x its delta; sign-flip = reference - 10 x an honest delta.", ""]
    return "\n".join(lines) + "\n"


def comparison(raw: dict) -> str | None:
    s = raw.get("scenarios", {})
    if "federated-clean" not in s:
        return None
    clean = s["federated-clean"]["test"]["f1"]
    parts = [f"Clean run (screened-fedavg): F1 {clean:.3f}."]
    for attack, robust_key, plain_key in (("boosted", "federated-attack-robust", "federated-attack-fedavg"),
                                          ("sign-flip", "federated-signflip-robust", "federated-signflip-fedavg")):
        if robust_key not in s:
            continue
        robust = s[robust_key]["test"]["f1"]
        text = (f"With 20 % {attack} attackers (factor 10): screened-fedavg F1 {robust:.3f} "
                f"({100 * (robust - clean):+.1f} points; target: within 3)")
        if plain_key in s:
            plain = s[plain_key]["test"]["f1"]
            text += f", plain FedAvg F1 {plain:.3f} ({100 * (plain - clean):+.1f} points)"
        nodes = s[robust_key]["per_node"]
        bad = [n for n in nodes if n["malicious"]]
        text += (f"; attackers' flags on chain {sum(n['flags'] for n in bad)} for {len(bad)} attackers over "
                 f"{s[robust_key]['config']['rounds']} rounds, honest nodes flagged "
                 f"{sum(n['flags'] for n in nodes if not n['malicious'])} times.")
        parts.append(text)
    return " ".join(parts)


def _trim(raw: dict) -> dict:
    """Keep the audit's verdict and counts, not every blob it checked (the JSON stays small)."""
    for r in raw.get("scenarios", {}).values():
        a = r.get("audit")
        if isinstance(a, dict) and ("lineage" in a or "nodes" in a or len(json.dumps(a, default=str)) > 4000):
            r["audit"] = {"ok": a.get("ok"), "violations": a.get("violations", [])[:20],
                          "warnings": a.get("warnings", [])[:20],
                          "aggregates_recomputed": len(a.get("aggregates", []))}
    return raw


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="*", default=None, help="scenario names (default: all)")
    p.add_argument("--nodes", type=int, default=50)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--fed-rounds", type=int, default=10)
    p.add_argument("--accounts", type=int, default=1000)
    p.add_argument("--eval-accounts", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=1, help="chained: local epochs per visit")
    p.add_argument("--lr", type=float, default=5e-4, help="chained: learning rate (the model visits 1000 "
                   "times; 1e-2 made the training loss rise, see the .md)")
    p.add_argument("--fed-epochs", type=int, default=2)
    p.add_argument("--fed-lr", type=float, default=1e-2)
    p.add_argument("--reuse", default=None, help="reuse the simulations of this earlier run directory")
    p.add_argument("--work", default=None, help="work directory (default: a temp dir, kept)")
    p.add_argument("--render", action="store_true", help="only rewrite the .md from the saved JSON")
    args = p.parse_args()

    raw = json.loads(RAW.read_text()) if RAW.exists() else {"scenarios": {}}
    if not args.render:
        import logging

        from chainfl.agents.runner import limit_torch_threads

        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        for noisy in ("web3", "urllib3", "eth", "asyncio", "chainfl.agents.node"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        limit_torch_threads()
        work = Path(args.work or tempfile.mkdtemp(prefix="chainfl-seed-"))
        work.mkdir(parents=True, exist_ok=True)
        reuse = args.reuse
        for name, (backend, cfg) in scenarios(args).items():
            if args.only and name not in args.only:
                continue
            print(f"=== {name} ({backend}) in {work}", file=sys.stderr)
            env = environment()
            result = run_one(name, backend, cfg, work, reuse)
            result["environment"] = env
            result["command"] = " ".join(["python", "benchmarks/seed_scenario.py", "--only", name,
                                          "--nodes", str(args.nodes), "--rounds", str(args.rounds),
                                          "--fed-rounds", str(args.fed_rounds), "--accounts", str(args.accounts),
                                          "--eval-accounts", str(args.eval_accounts), "--seed", str(args.seed),
                                          "--epochs", str(args.epochs), "--lr", str(args.lr),
                                          "--fed-epochs", str(args.fed_epochs), "--fed-lr", str(args.fed_lr)]
                                         + (["--reuse", "<earlier run dir>"] if reuse else []))
            raw = json.loads(RAW.read_text()) if RAW.exists() else {"scenarios": {}}   # merge: runs may overlap
            raw["scenarios"][name] = result
            reuse = reuse or str(work / f"run-{name}")     # later scenarios reuse these simulations
            raw["comparison"] = comparison(raw)
            RAW.write_text(json.dumps(_trim(raw), indent=1, sort_keys=True, default=str) + "\n")
            MD.write_text(render(raw))
            print(f"=== {name}: F1 {result['test']['f1']:.3f}, {result['wall_seconds']} s", file=sys.stderr)
    raw = json.loads(RAW.read_text()) if RAW.exists() else raw
    raw["comparison"] = comparison(raw)
    RAW.write_text(json.dumps(_trim(raw), indent=1, sort_keys=True, default=str) + "\n")
    MD.write_text(render(raw))


if __name__ == "__main__":
    main()
