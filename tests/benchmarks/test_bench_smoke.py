"""Each benchmark script of benchmarks/{flower_compare,overhead,scale,summarise}.py runs end to end
at a tiny size (real data subsample, a few nodes, 2 rounds, the embedded chain and store), so the
scripts do not rot; plus the shared helpers in benchmarks/_common.py.

The scripts run as ``python -m benchmarks.<name>`` in a child process from the repository root,
exactly as their results files say they were run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from chainfl.config import REPO_ROOT

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import _common as C  # noqa: E402
from benchmarks import summarise  # noqa: E402

TINY = ["--max-rows", "400", "--rounds", "2"]


def run_script(module: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run([sys.executable, "-m", f"benchmarks.{module}", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


# --- _common ---------------------------------------------------------------------------------

def test_median_and_repeat():
    assert C.median([3, 1, 2]) == 2.0
    assert C.median([4, 1, 3, 2]) == 2.5
    with pytest.raises(ValueError):
        C.median([])
    calls = []
    times, value = C.repeat(lambda: calls.append(1) or len(calls), 3)
    assert len(times) == 3 and all(t >= 0 for t in times) and value == 3


def test_markdown_table_formats_cells_and_checks_shape():
    text = C.markdown_table(["a", "b", "c"], [[1, 0.12345, None], ["x|y", float("nan"), 2.0]], digits=2)
    assert text.splitlines() == ["| a | b | c |", "|---|---|---|", "| 1 | 0.12 | – |",
                                 "| x\\|y | nan | 2.00 |"]
    with pytest.raises(ValueError):
        C.markdown_table(["a"], [[1, 2]])


class Child:
    value = 5

    def work(self, x):
        return x * 2


class Thing:
    def __init__(self):
        self.child = Child()
        self.value = 1

    def work(self, x):
        return x * 2

    def other(self):
        return "o"


def test_timed_proxy_times_calls_forwards_state_and_children():
    timings = C.Timings()
    target = Thing()
    proxy = C.timed_proxy(target, timings, "cat", methods=("work",), children={"child": "kid"})
    assert proxy.work(21) == 42
    assert proxy.other() == "o"                    # not in methods: forwarded, not timed
    assert proxy.value == 1
    proxy.value = 7                                # writes go through to the target
    assert target.value == 7
    assert proxy.child.work(1) == 2                # child reached through the proxy is timed too
    assert timings.calls == {"cat": 1, "kid": 1}
    assert set(timings.by_name) == {"cat.work", "kid.work"}
    before = timings.snapshot()
    proxy.work(1)
    assert timings.since(before)["cat"] >= 0 and timings.calls["cat"] == 2


def test_patched_wraps_and_restores():
    timings = C.Timings()
    original = Thing.work
    with C.patched(Thing, "work", lambda f: timings.timed("w", f)):
        assert Thing().work(3) == 6
        assert Thing.work is not original
    assert Thing.work is original
    assert timings.calls["w"] == 1


def test_provenance_and_write_results(tmp_path):
    machine = C.machine_info()
    assert machine["cores"] >= 1 and machine["ram_gib"] > 0 and machine["cpu"]
    vers = C.versions()
    assert vers["torch"] and vers["web3"] == "8.0.0" and vers["chainfl"] != ""
    assert C.command_line([str(C.BENCH_DIR / "scale.py"), "--nodes", "10"]) == \
        "python -m benchmarks.scale --nodes 10"
    table = C.Table("T", ["x", "y"], [["a", 1.5]], note="n")
    path = C.write_results("demo", "Demo", [table], headline={"k": 1}, summary="S", notes=["N"],
                           command="python -m benchmarks.demo", results_dir=tmp_path)
    md = path.read_text()
    assert "- command: `python -m benchmarks.demo`" in md and "cores" in md and "torch" in md
    assert "| a | 1.500 |" in md and "## Notes" in md
    meta = json.loads((tmp_path / "demo.json").read_text())
    assert meta["headline"] == {"k": 1} and meta["tables"][0]["rows"] == [["a", 1.5]]


def test_workload_matches_the_agents_seed_formula(real_data_dir):
    from types import SimpleNamespace

    from chainfl.agents.modelio import node_seed

    w = C.federated_workload(n_nodes=5, seed=3, max_rows=300)
    assert w.n_nodes == 5 and len(w.raw_val_parts) == 5
    assert sum(len(y) for _, y in w.parts) == w.description["train_rows"]
    assert sum(len(y) for _, y in w.raw_val_parts) == len(w.y_val)
    assert w.node_seed(4, 2) == node_seed(SimpleNamespace(seed=3), 2, 4)


# --- scripts end to end ----------------------------------------------------------------------

def test_flower_compare_inprocess_and_on_chain_tiny(tmp_path, real_data_dir):
    proc = run_script("flower_compare", "--systems", "inprocess,chain", "--onchain", "eth-tester:file",
                      "--nodes", "3", *TINY, "--results-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((tmp_path / "flower_compare.json").read_text())
    h = meta["headline"]
    assert h["nodes"] == 3 and h["rounds"] == 2
    assert h["inprocess"]["median_round_s"] > 0
    chain = h["chain eth-tester + file"]
    assert chain["median_round_s"] > 0 and chain["ratio_to_inprocess"] > 1
    # the on-chain agents train exactly what the in-process loop trains
    assert h["max_abs_weight_diff_to_inprocess"]["chain eth-tester + file"] == 0.0
    # every transaction's gas: 3 submissions per round, one deploy, one task
    assert h["gas_by_op"]["submitUpdate"] > 0 and h["gas_total"] == sum(h["gas_by_op"].values())
    runs = meta["extra"]["chain eth-tester + file"]["detail"]["gas_by_op"]
    assert runs["submitUpdate"]["count"] == 3 * 2 and runs["deploy"]["count"] == 1
    assert "measured side by side in one run" in (tmp_path / "flower_compare.md").read_text()


def test_flower_compare_says_how_to_install_flower_when_missing(tmp_path):
    code = ("import sys; sys.modules['flwr'] = None; "
            "from benchmarks.flower_compare import main; sys.exit(main(['--systems', 'flower']))")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert 'pip install "flwr[simulation]==1.42.0"' in proc.stderr


def test_flower_compare_rejects_bad_arguments():
    proc = run_script("flower_compare", "--systems", "inprocess,warp", timeout=120)
    assert proc.returncode == 2 and "unknown system" in proc.stderr
    proc = run_script("flower_compare", "--rounds", "1", "--systems", "inprocess", timeout=120)
    assert proc.returncode == 2 and "--rounds must be >= 2" in proc.stderr


def test_overhead_tiny(tmp_path, real_data_dir):
    proc = run_script("overhead", "--configs", "eth-tester:file", "--nodes", "3", *TINY,
                      "--profile", "eth-tester:file", "--results-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((tmp_path / "overhead.json").read_text())
    cfg = meta["headline"]["configs"]["eth-tester + file"]
    assert 0 < cfg["chain_storage_pct"] <= 100
    assert cfg["tx_per_round"] == 3 + 2                    # 3 updates + open + finalize
    run = meta["extra"]["runs"][0]
    assert run["same_model_as_inprocess"] is True
    for row in run["per_round"]:                           # categories never exceed the wall time
        assert sum(row[c] for c in ("training", "chain", "storage", "codec", "aggregation")) <= row["wall"] + 1e-6
    md = (tmp_path / "overhead.md").read_text()
    assert "cProfile" in md and "chain+storage %" in md


def test_overhead_rejects_unknown_backend():
    proc = run_script("overhead", "--configs", "geth:file", timeout=120)
    assert proc.returncode == 2 and "CHAIN:STORE" in proc.stderr


def test_scale_tiny(tmp_path, real_data_dir):
    proc = run_script("scale", "--nodes", "3", "--systems", "inprocess,eth-tester:file", *TINY,
                      "--results-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((tmp_path / "scale.json").read_text())
    runs = {(r["system"], r["nodes"]): r for r in meta["extra"]["runs"]}
    assert set(runs) == {("inprocess", 3), ("eth-tester:file", 3)}
    assert runs[("eth-tester:file", 3)]["tx_per_round"] == 3 + 2
    assert runs[("inprocess", 3)]["tx_per_round"] == 0
    assert all(r["peak_rss_mib"] > 50 for r in runs.values())
    # the same training on and off chain gives the same model, hence the same F1
    assert runs[("inprocess", 3)]["f1"] == runs[("eth-tester:file", 3)]["f1"]
    assert "| eth-tester:file | 3 |" in (tmp_path / "scale.md").read_text()


# --- the index ---------------------------------------------------------------------------------

OTHER_MD = """# Registry gas per operation

Command: `python benchmarks/gas.py --rpc http://x`
Date: 2026-11-27 00:33 UTC

| operation | eth-tester |
|---|---:|
| addNode | 47,872 |
"""


def test_summarise_copies_headlines_and_tables(tmp_path):
    C.write_results("scale", "Scale", [C.Table("FedAvg rounds by node count", ["system", "nodes"],
                                               [["inprocess", 10]])],
                    headline={"rounds": 2, "by_system": {"inprocess": {"10": {
                        "s_per_round": 0.123, "peak_rss_mib": 400.0, "tx_per_round": 0}}}},
                    command="python -m benchmarks.scale --nodes 10", results_dir=tmp_path)
    (tmp_path / "gas.md").write_text(OTHER_MD)
    out = tmp_path / "README.md"
    assert summarise.main(["--results-dir", str(tmp_path), "--out", str(out)]) == 0
    text = out.read_text()
    assert "`python -m benchmarks.scale --nodes 10`" in text
    assert "inprocess — 10: 0.12 s/round, 400 MiB, 0 tx." in text
    assert "`python benchmarks/gas.py --rpc http://x`" in text and "| addNode | 47,872 |" in text
    assert "experiments.md (missing)" in text
    assert summarise.main(["--results-dir", str(tmp_path), "--out", str(out), "--check"]) == 0
    out.write_text(text + "hand edit\n")
    assert summarise.main(["--results-dir", str(tmp_path), "--out", str(out), "--check"]) == 1


def test_read_tables_keeps_headings():
    md = "# A\n\ntext\n\n## Table one\n\n| x | y |\n|---|---|\n| 1 | 2 |\n\n## Two\n| a |\n|:--|\n| b |\n"
    tables = summarise.read_tables(md)
    assert [t.heading for t in tables] == ["Table one", "Two"]
    assert tables[0].text.splitlines()[-1] == "| 1 | 2 |"


def test_experiments_quick_attacks_and_screening_verdict(tmp_path, real_data_dir):
    proc = run_script("experiments", "--quick", "--nodes", "10", "--sections", "central", "attacks",
                      "--strategies", "fedavg", "screened-fedavg", "--attacks", "none", "boosted",
                      "--name", "exp", "--results-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((tmp_path / "exp.json").read_text())
    raw = meta["extra"]["raw"]
    assert 0 < raw["central_mlp"][0]["f1"] <= 1
    screened = raw["attack_screened-fedavg_boosted"][0]
    assert 0 <= screened["detect_rate"] <= 1 and 0 <= screened["false_flag_rate"] <= 1
    md = (tmp_path / "exp.md").read_text()
    assert "Computed verdict, screening (screened-fedavg)" in md and "of boosted updates caught" in md
    assert "fedavg (probe)" in md                  # unscreened strategies are scored by a probe


def test_experiments_attack_without_a_clean_run_still_writes_its_table(tmp_path, real_data_dir):
    proc = run_script("experiments", "--quick", "--nodes", "10", "--sections", "attacks",
                      "--strategies", "fedavg", "multi-krum", "--attacks", "sign-flip",
                      "--name", "exp", "--results-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = (tmp_path / "exp.md").read_text()
    assert "| multi-krum |" in md and "Computed verdict, sign-flip" not in md    # nothing to compare


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_audit_detect_tiny_starts_and_stops_its_own_anvil(tmp_path):
    port = _free_port()
    proc = run_script("audit_detect", "--handoffs", "20", "--nodes", "3", "--rounds", "2", "--accounts", "30",
                      "--repeats", "1", "--port", str(port), "--results-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((tmp_path / "audit_detect.json").read_text())
    assert meta["extra"]["chained"]["events"] == 20 + 1           # the handoffs + TaskCreated
    assert meta["extra"]["federated"]["aggregates"] == 2          # every round's aggregate recomputed
    assert meta["headline"]["detect_accounts_per_s"] > 0
    import socket

    with socket.socket() as s, pytest.raises(ConnectionRefusedError):   # Anvil was stopped
        s.connect(("127.0.0.1", port))


@pytest.mark.realdata
def test_protocol_attacks_tiny_starts_its_own_anvil_and_judges_the_runs(tmp_path, real_data_dir):
    proc = run_script("protocol_attacks", "--nodes", "10", "--rounds", "2", "--seeds", "0",
                      "--attack", "copy,inflated", "--results-dir", str(tmp_path))
    assert proc.returncode in (0, 1), proc.stderr[-3000:]       # 1 = the 2-point target missed at this size
    data = json.loads((tmp_path / "protocol_attacks.json").read_text())
    (clean, attacked) = data["extra"]["runs"]
    assert clean["attack"] == "none" and attacked["attack"] == "copy,inflated"
    assert clean["audit_ok"] and attacked["audit_ok"]
    assert attacked["by_kind"]["copy"]["flags"] == {"flagged:copy": 2}
    assert attacked["by_kind"]["inflated"]["flags"] == {"flagged:samples": 2}
    assert "| seed | F1 clean |" in (tmp_path / "protocol_attacks.md").read_text()


def test_chained_newton_tiny(tmp_path, real_data_dir):
    proc = run_script("chained_newton", "--seeds", "0", "--nodes", "10", "--results-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((tmp_path / "chained_newton.json").read_text())
    h = meta["headline"]
    assert h["boosted_20_malicious_rejected"] == 1.0 and h["boosted_20_honest_rejected"] == 0.0
    assert h["f1_dirichlet_0.5"] > 0.85 and h["handoff_bytes"] > h["weights_bytes"]
    chain = meta["extra"]["chain"]
    assert {r["attack"] for r in chain} == {"none", "boosted"} and all(r["audit_ok"] for r in chain)
    assert all(r["findings_on_honest"] == 0 for r in chain)
    assert "max |w − pooled Newton|" in (tmp_path / "chained_newton.md").read_text()


def test_peer_onchain_tiny(tmp_path, real_data_dir):
    proc = run_script("peer_onchain", "--seeds", "0", "--nodes", "10", "--rounds", "2", "--workers", "1",
                      "--results-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads((tmp_path / "peer_onchain.json").read_text())["extra"]["runs"]
    assert len(runs) == 8 and all(r["audit_ok"] and r["recomputed"] == r["rounds"] == 2 for r in runs)
    assert all(r["honest_excluded"] == 0 and not r["bad_excluded"] for r in runs if not r["peer"])
    boosted = next(r for r in runs if r["peer"] and r["attack"] == "boosted")
    assert boosted["bad_excluded"] >= 0.5 and boosted["peer_reports_per_round"] == 10
    assert "| boosted 20% | peer validation (loss) |" in (tmp_path / "peer_onchain.md").read_text()


def test_gbdt_rounds_tiny(tmp_path, real_data_dir):
    proc = run_script("gbdt_rounds", "--seeds", "0", "--configs", "3", "--results-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((tmp_path / "gbdt_rounds.json").read_text())
    runs = meta["extra"]["runs"]
    assert len(runs) == 4 and meta["headline"]["default_f1"] > 0.85
    assert [r["trees"] for r in runs["depth 4, lr 0.3, 4 concurrent, 116 trees (the default)"]] == [116]


def test_gbdt_onchain_tiny(tmp_path, real_data_dir):
    proc = run_script("gbdt_onchain", "--seeds", "0", "--nodes", "10", "--rounds", "8", "--workers", "1",
                      "--results-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads((tmp_path / "gbdt_onchain.json").read_text())["extra"]["runs"]
    assert [(r["attack"], r["fraction"]) for r in runs] == [("none", 0.0), ("label-flip", 0.2), ("label-flip", 0.3)]
    assert all(r["model"] == "gbdt" and r["audit_ok"] and r["recomputed"] == r["rounds"] == 8 for r in runs)
    assert runs[0]["bad_flagged"] is None and [r["bad_nodes"] for r in runs] == [0, 2, 3]
    assert all(0.0 <= r["honest_flagged"] <= 1.0 for r in runs)
    assert all(0.0 <= r["bad_flagged"] <= 1.0 for r in runs[1:])
    assert "| label-flip 30% |" in (tmp_path / "gbdt_onchain.md").read_text()


def test_gbdt_defence_quick(tmp_path, real_data_dir):
    proc = run_script("gbdt_defence", "--quick", "--results-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((tmp_path / "gbdt_defence.json").read_text())
    runs = meta["extra"]
    assert set(runs) == {"α=0.5/none/0/0/z2.5", "α=0.5/label-flip 20%/0/0/z2.5", "α=0.5/label-flip 30%/0/0/z2.5"}
    for key, res in runs.items():
        for r in res:
            if "flip" in key:
                assert r["n_bad"] > 0 and 0.0 <= r["excluded_bad"] <= 1.0 and 0.0 <= r["excluded_bad_rows"] <= 1.0
            else:
                assert r["n_bad"] == 0 and r["excluded_bad"] is None
    assert "| flipper rows excluded |" in (tmp_path / "gbdt_defence.md").read_text()


def test_peer_onchain_metric_and_peer_only(tmp_path, real_data_dir):
    proc = run_script("peer_onchain", "--seeds", "0", "--nodes", "8", "--rounds", "1", "--workers", "1",
                      "--metric", "auc+loss", "--peer-only", "--results-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads((tmp_path / "peer_onchain.json").read_text())["extra"]["runs"]
    assert len(runs) == 4 and all(r["peer"] and r["audit_ok"] for r in runs)
    text = (tmp_path / "peer_onchain.md").read_text()
    assert "| none | peer validation (auc+loss) |" in text and "F1 points vs clean (with peers)" in text
