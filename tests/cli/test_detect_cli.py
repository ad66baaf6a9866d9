"""``chainfl detect`` on ordinary nodes: the registry and its tasks live on an Anvil started with
``--prune-history`` (no state but the latest, like a non-archive node; ``--rpc``), the accounts
scored are a new simulation (seed 22) on that node or on its archive twin, which holds the same
blocks (``--scan-rpc``). The model was trained on another simulation (seed 21, the session's Anvil).
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from chainfl.chain import connect
from chainfl.cli import main
from chainfl.data import Dataset, extract_features, simulate
from chainfl.learning.evaluate import evaluate
from chainfl.learning.models import ModelConfig
from chainfl.learning.train import TrainConfig
from chainfl.storage import open_store

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from audit.builders import record_chained  # noqa: E402
from data.twins import CHAIN_BACKENDS, NEEDS_ANVIL, start_twins  # noqa: E402

MODEL = ModelConfig(kind="mlp", hidden=(8,))
TRAIN = TrainConfig(epochs=15, batch_size=16, lr=0.02, seed=1)


@pytest.fixture(scope="module")
def setup(anvil_url, tmp_path_factory):
    if "anvil" not in CHAIN_BACKENDS:
        pytest.skip(NEEDS_ANVIL)
    base = tmp_path_factory.mktemp("detect-cli")
    store_dir = base / "store"
    store = open_store(store_dir.as_uri())
    with connect(anvil_url) as chain:
        sim = simulate(chain, n_accounts=60, seed=21, progress=False)
        ds = extract_features(chain.w3, sim.from_block, sim.to_block, progress=False).dataset(sim.labels)
    archive, pruned = start_twins(base, "detect")
    try:
        for node in (archive, pruned):
            with connect(node.url) as chain:
                new = simulate(chain, n_accounts=40, seed=22, progress=False)
        new.save(base / "sim-new")
        with connect(pruned.url) as chain:                        # every task on the ordinary node
            rec = record_chained(chain, store, n_nodes=2, rounds=2, dataset=ds, model=MODEL, train=TRAIN)
            erc20 = Dataset(np.hstack([ds.X, np.zeros((len(ds), 1), dtype=np.float32)]), ds.y,
                            [*ds.feature_names, "Total ERC20 tnxs"], ds.ids, "with an ERC20 column")
            rec_erc20 = record_chained(chain, store, n_nodes=2, rounds=1, dataset=erc20, model=MODEL, train=TRAIN)
            tiny = Dataset(ds.X * 1e-9, ds.y, ds.feature_names, ds.ids, "values a billion times smaller")
            rec_tiny = record_chained(chain, store, n_nodes=2, rounds=1, dataset=tiny, model=MODEL, train=TRAIN)
        yield {"archive": archive.url, "pruned": pruned.url, "store": store_dir, "rec": rec, "erc20": rec_erc20,
               "tiny": rec_tiny, "new": new, "base": base}
    finally:
        pruned.stop()
        archive.stop()


def _args(s, *extra, rec=None):
    rec = rec or s["rec"]
    new = s["new"]
    return ["detect", "--task", str(rec.task_id), "--rpc", s["pruned"], "--store", s["store"].as_uri(),
            "--registry", rec.registry.address, "--from-block", str(new.from_block), "--to-block",
            str(new.to_block), *extra]


def _invoke(args, env=None):
    result = CliRunner(env=env).invoke(main, args)
    assert result.exit_code == 0, result.output
    return result


def test_detect_on_an_ordinary_node_ranks_every_account_and_reports_metrics(setup, tmp_path):
    s = setup
    new = s["new"]
    out = tmp_path / "ranked.csv"
    result = _invoke(_args(s, "-o", str(out), "--labels", str(s["base"] / "sim-new"), "--json"))
    data = json.loads(result.stdout)
    rows = list(csv.DictReader(out.open()))
    with connect(s["pruned"]) as other:
        features = extract_features(other.w3, new.from_block, new.to_block, progress=False)
    every, ds = features.dataset(), features.dataset(new.labels)
    assert list(rows[0]) == ["rank", "address", "score", "predicted", "threshold", "rank_cap", "max_abs_z",
                             "top_features", "label"]
    assert len(rows) == data["accounts"] == len(every) > 0
    assert [int(r["rank"]) for r in rows] == list(range(1, len(rows) + 1))
    assert [float(r["score"]) for r in rows] == sorted((float(r["score"]) for r in rows), reverse=True)
    assert {r["address"] for r in rows} == set(every.ids)
    # the label column holds the TRUE labels from --labels (empty for accounts without one) ...
    assert {r["address"]: r["label"] for r in rows} == {a: str(new.labels[a]) if a in new.labels else ""
                                                        for a in every.ids}
    # ... and predicted is the alert at the release threshold (no cap here), which every row states
    threshold = data["release"]["threshold"]
    assert {float(r["threshold"]) for r in rows} == {threshold} and {r["rank_cap"] for r in rows} == {""}
    flagged = data["flagged"]
    assert flagged == data["above_threshold"] == len(data["alerts"]) > 0
    assert [r["predicted"] for r in rows] == ["1"] * flagged + ["0"] * (len(rows) - flagged)
    assert min(a["score"] for a in data["alerts"]) >= threshold
    assert float(rows[flagged]["score"]) <= threshold + 1e-6 if flagged < len(rows) else True
    assert all(float(r["max_abs_z"]) >= 0 for r in rows)
    assert data["out_of_distribution"]["warning"] is False and "warning" not in result.stderr
    assert data["chains"] == {"registry": s["pruned"], "scanned": s["pruned"]}
    # the printed metrics are the learning module's evaluation of the same release on the same accounts
    from chainfl.audit.detect import load_release

    rec = s["rec"]
    with connect(s["pruned"]) as chain:
        rel, _ = load_release(chain, rec.registry.__class__.at(chain, rec.registry.address),
                              open_store(s["store"].as_uri()), rec.task_id, audit=False)
    assert rel.cid == data["release"]["cid"]
    X = rel.scaler.transform(ds.select(list(rel.feature_names)).X)
    expected = evaluate(rel.model, rel.state, X, ds.y, rel.threshold)
    for key in ("precision", "recall", "f1", "confusion"):
        assert data["metrics"][key] == expected[key], key
    assert data["metrics"]["labelled"] == len(ds)


def test_scoring_the_archive_twin_gives_the_same_bytes(setup, tmp_path):
    s = setup
    pruned, archive = tmp_path / "pruned.csv", tmp_path / "archive.csv"
    _invoke(_args(setup, "--out", str(pruned)))
    _invoke(_args(setup, "--scan-rpc", s["archive"], "--output", str(archive)))
    assert pruned.read_bytes() == archive.read_bytes()
    assert "label" not in pruned.read_text().splitlines()[0].split(",")       # no --labels, no label column


def test_detect_table_output(setup):
    result = _invoke(_args(setup))
    assert "accounts scored" in result.stdout and "flagged" in result.stdout
    assert "alerts" in result.stdout or "No alerts" in result.stdout


def test_the_rpc_envvar_is_the_registry_chain(setup, tmp_path):
    s = setup
    args = _args(s, "-o", str(tmp_path / "a.csv"), "--json", "--scan-rpc", s["archive"])
    del args[args.index("--rpc"):args.index("--rpc") + 2]
    data = json.loads(_invoke(args, env={"CHAINFL_RPC": s["pruned"]}).stdout)
    assert data["chains"] == {"registry": s["pruned"], "scanned": s["archive"]}
    # the old option name still names the registry's chain, and beats the environment variable
    old = [a if a != "--rpc" else "--registry-rpc" for a in _args(s, "--json")]
    data = json.loads(_invoke(old, env={"CHAINFL_RPC": "http://127.0.0.1:1"}).stdout)
    assert data["chains"]["registry"] == s["pruned"]
    # the old way to name two chains (--registry-rpc REG --rpc SCANNED) is refused with the new spelling
    mixed = CliRunner().invoke(main, [*_args(s), "--registry-rpc", s["archive"]])
    assert mixed.exit_code == 2, mixed.output
    assert f"--rpc {s['archive']} --scan-rpc {s['pruned']}" in mixed.output


def test_only_the_addresses_asked_for_are_scored(setup, tmp_path):
    s = setup
    new = s["new"]
    with connect(s["pruned"]) as other:
        features = extract_features(other.w3, new.from_block, new.to_block, progress=False)
    every = features.dataset().ids
    contract = next(a for a in new.contracts if a in features.state.accounts)     # paid in the range
    stranger = "0x" + "5a" * 20
    wanted = [every[3], every[0].upper().replace("0X", "0x"), every[7]]
    (tmp_path / "ask.csv").write_text("Index,Address,note\n" + "".join(
        f"{i},{a},x\n" for i, a in enumerate([*wanted, stranger, contract])))
    out = tmp_path / "asked.csv"
    result = _invoke(_args(s, "--addresses", str(tmp_path / "ask.csv"), "-o", str(out), "--json"))
    data = json.loads(result.stdout)
    rows = list(csv.DictReader(out.open()))
    assert sorted(r["address"] for r in rows) == sorted(a.lower() for a in wanted)
    assert data["accounts"] == 3
    assert data["not_scored"] == {"not_seen": [stranger], "contracts": [contract]}
    assert "1 of the 5 addresses asked for have no transaction" in result.stderr
    assert "1 of the 5 addresses asked for are contracts" in result.stderr
    # the same scores as when every account is scored
    full = tmp_path / "full.csv"
    _invoke(_args(s, "-o", str(full)))
    by_address = {r["address"]: r["score"] for r in csv.DictReader(full.open())}
    assert {r["address"]: r["score"] for r in rows} == {a.lower(): by_address[a.lower()] for a in wanted}
    (tmp_path / "one.txt").write_text(f"# one per line\n{every[5]}\n")
    data = json.loads(_invoke(_args(s, "--addresses", str(tmp_path / "one.txt"), "--json")).stdout)
    assert data["accounts"] == 1 and data["not_scored"] == {"not_seen": [], "contracts": []}


def test_top_and_budget_cap_the_alerts_highest_scores_first(setup, tmp_path):
    s = setup
    out = tmp_path / "plain.csv"
    plain = json.loads(_invoke(_args(s, "-o", str(out), "--json")).stdout)
    n, above = plain["accounts"], plain["above_threshold"]
    assert above >= 3, "the fixture's release must flag several accounts for a cap to matter"
    out_top = tmp_path / "top.csv"
    top = json.loads(_invoke(_args(s, "--top", "2", "-o", str(out_top), "--json")).stdout)
    assert top["alert_policy"] == {"threshold": plain["threshold"], "top": 2, "budget": None, "rank_cap": 2}
    assert top["flagged"] == 2 and top["above_threshold"] == above
    rows = list(csv.DictReader(out_top.open()))
    assert [r["predicted"] for r in rows] == ["1", "1"] + ["0"] * (n - 2)
    assert {r["rank_cap"] for r in rows} == {"2"}
    assert [r["address"] for r in rows] == [r["address"] for r in csv.DictReader(out.open())]   # same ranking
    budget = json.loads(_invoke(_args(s, "--budget", "0.05", "--json")).stdout)
    assert budget["alert_policy"]["rank_cap"] == int(0.05 * n) and budget["flagged"] == min(above, int(0.05 * n))
    assert [a["rank"] for a in budget["alerts"]] == list(range(1, budget["flagged"] + 1))
    labelled = json.loads(_invoke(_args(s, "--top", "2", "--labels", str(s["base"] / "sim-new"), "--json")).stdout)
    assert labelled["metrics"]["alerts"]["flagged"] <= 2
    assert labelled["metrics"]["confusion"] == plain_metrics(s)["confusion"]     # threshold metrics unchanged
    bad = CliRunner().invoke(main, _args(s, "--budget", "2"))
    assert bad.exit_code == 1 and "--budget is a share of the scored accounts" in bad.stderr


def plain_metrics(s) -> dict:
    return json.loads(_invoke(_args(s, "--labels", str(s["base"] / "sim-new"), "--json")).stdout)["metrics"]


def test_a_model_with_erc20_features_is_refused_before_any_block_is_read(setup):
    s = setup
    args = _args(s, rec=s["erc20"])
    args[args.index("--to-block") + 1] = str(10**9)      # reading blocks would fail differently
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert "1 of 23 features cannot be computed from a chain's blocks: 'Total ERC20 tnxs'" in result.stderr
    assert "chainfl.data.schema.DERIVED_FROM_CHAIN" in result.stderr and "Traceback" not in result.output


def test_inputs_far_outside_the_training_data_are_warned_about(setup):
    s = setup
    result = _invoke(_args(s, "--json", rec=s["tiny"]))
    data = json.loads(result.stdout)
    ood = data["out_of_distribution"]
    assert ood["warning"] is True and ood["features_beyond"] >= 10
    assert ood["features"][0]["share"] > 0.5 and ood["features"][0]["max_abs_z"] > 10
    assert "warning: inputs fall far outside the training distribution" in result.stderr
    assert ood["features"][0]["feature"] in result.stderr


def test_detect_refuses_a_model_that_fails_verification(setup, tmp_path):
    s = setup
    rec = s["rec"]
    copy = tmp_path / "store"
    shutil.copytree(s["store"], copy)
    for p in (copy / "blocks").rglob(rec.cids[-1]):       # the final handoff's model
        p.unlink()
    args = _args(s)
    args[args.index("--store") + 1] = copy.as_uri()
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert "fails its audit" in result.stderr and rec.cids[-1] in result.stderr


@pytest.mark.slow
def test_detect_equals_the_evaluation_in_chainfl_run(anvil_url, tmp_path):
    """`chainfl run` evaluates its release on a new simulated chain; `chainfl detect` on that chain
    with its labels reports the same precision/recall/F1 — and the run's audit verified."""
    store = (tmp_path / "store").as_uri()
    env = {"CHAINFL_HOME": str(tmp_path / "home")}
    run = CliRunner(env=env).invoke(main, [
        "run", "--mode", "federated", "--nodes", "3", "--rounds", "2", "--strategy", "screened-fedavg",
        "--accounts", "60", "--eval-accounts", "40", "--epochs", "2", "--seed", "41", "--rpc", anvil_url,
        "--store", store, "--quiet", "--json"])
    assert run.exit_code == 0, run.output
    ran = json.loads(run.stdout)
    assert ran["audit"]["ok"] is True and ran["audit"]["counts"]["aggregates_recomputed"] == 2
    first, last = ran["data"]["eval_blocks"]
    result = CliRunner(env=env).invoke(main, [
        "detect", "--task", str(ran["task_id"]), "--rpc", anvil_url, "--registry", ran["registry"],
        "--scan-rpc", ran["data"]["eval_chain"], "--store", store, "--from-block", str(first), "--to-block",
        str(last), "--labels", ran["data"]["eval_labels"], "--json"])
    assert result.exit_code == 0, result.output
    detected = json.loads(result.stdout)
    assert detected["release"]["cid"] == ran["release"]["cid"]
    assert detected["release"]["source"] == "release"
    for key in ("precision", "recall", "f1", "roc_auc", "pr_auc", "confusion", "threshold"):
        assert detected["metrics"][key] == ran["test"][key], key
