"""``chainfl audit`` against a real Anvil node and the embedded store."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from chainfl.chain import connect
from chainfl.cli import main
from chainfl.storage import open_store

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from audit.builders import record_chained, record_federated  # noqa: E402


@pytest.fixture(scope="module")
def history(anvil_url, tmp_path_factory):
    store_dir = tmp_path_factory.mktemp("audit-cli") / "store"
    store = open_store(store_dir.as_uri())
    with connect(anvil_url) as chain:
        chained = record_chained(chain, store, n_nodes=2, rounds=2, reject_at=2)
        federated = record_federated(chain, store, n_nodes=3, rounds=2, strategy="trimmed-mean")
    return anvil_url, store_dir, chained, federated


def _args(url, store_dir, rec, *extra):
    return ["audit", "--task", str(rec.task_id), "--rpc", url, "--store", store_dir.as_uri(),
            "--registry", rec.registry.address, *extra]


def test_honest_history_exits_zero_with_json(history):
    url, store_dir, chained, _ = history
    result = CliRunner().invoke(main, _args(url, store_dir, chained, "--json"))
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["ok"] is True and data["violations"] == []
    assert data["counts"]["handoffs"] == 4 and data["counts"]["rejections"] == 1


def test_terminal_table_and_html_report(history, tmp_path):
    url, store_dir, _, federated = history
    html = tmp_path / "report.html"
    result = CliRunner().invoke(main, _args(url, store_dir, federated, "--html", str(html)))
    assert result.exit_code == 0, result.output
    assert "OK" in result.stdout and "Per round" in result.stdout and "recomputed" in result.stdout
    text = html.read_text()
    assert text.startswith("<!doctype html>") and "data:image/png;base64," in text
    assert "Aggregates recomputed" in text and federated.cids[-1] in text
    assert "<script" not in text and "http://" not in text.replace(url, "")   # self-contained


def test_violation_exits_one_naming_round_node_and_cid(history, tmp_path):
    url, store_dir, _, federated = history
    import shutil

    copy = tmp_path / "store"
    shutil.copytree(store_dir, copy)
    cid = federated.cids[2]                    # round 1, second node's update
    for p in (copy / "blocks").rglob(cid):
        p.unlink()
    result = CliRunner().invoke(main, _args(url, copy, federated))
    assert result.exit_code == 1, result.output
    node = federated.nodes[1].address
    line = next(line for line in result.stderr.splitlines() if "blob-missing" in line)
    assert "round 1" in line and node in line and cid in line


def test_unknown_task_is_a_clean_error(history):
    url, store_dir, chained, _ = history
    result = CliRunner().invoke(main, ["audit", "--task", "999", "--rpc", url, "--store", store_dir.as_uri(),
                                       "--registry", chained.registry.address])
    assert result.exit_code == 1
    assert "no TaskCreated event" in result.stderr and "Traceback" not in result.output


def test_registry_defaults_to_the_recorded_deployment(history, chainfl_home):
    from chainfl.chain import deployments

    url, store_dir, chained, _ = history
    with connect(url) as chain:
        deployments.record(chain, chained.registry.address)
    result = CliRunner().invoke(main, ["audit", "--task", str(chained.task_id), "--rpc", url,
                                       "--store", store_dir.as_uri(), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["registry"] == chained.registry.address


def test_an_embedded_chain_that_does_not_exist_is_named_not_created(tmp_path):
    missing = tmp_path / "no-such-chain"
    for args in (["audit", "--task", "1", "--rpc"], ["detect", "--task", "1", "--registry-rpc"]):
        result = CliRunner().invoke(main, [*args, f"eth-tester://{missing}"])
        assert result.exit_code == 1, result.output
        assert f"no embedded chain in {missing}" in result.stderr and "Traceback" not in result.output
    assert not missing.exists()                   # a read-only command leaves nothing behind
