"""`chainfl chain up/status/down` through click's CliRunner, on a real Anvil (own port)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from chainfl.chain.nodes import _alive, rpc_request
from chainfl.cli import main

PORT = 18653
URL = f"http://127.0.0.1:{PORT}"


@pytest.fixture
def runner(chainfl_home):
    return CliRunner()


def test_up_status_down_with_anvil(runner, chainfl_home):
    result = runner.invoke(main, ["chain", "up", "--node", "anvil", "--port", str(PORT), "--json"])
    assert result.exit_code == 0, result.output
    started = json.loads(result.stdout)
    try:
        assert started["url"] == URL
        assert (chainfl_home / "nodes" / "anvil.pid").exists()
        assert (chainfl_home / "nodes" / "anvil.log").exists()
        assert int(rpc_request(URL, "eth_chainId"), 16) == started["chain_id"]

        again = runner.invoke(main, ["chain", "up", "--node", "anvil", "--port", str(PORT)])
        assert again.exit_code == 1
        assert "already running" in again.output

        result = runner.invoke(main, ["chain", "status", "--rpc", URL, "--json"])
        assert result.exit_code == 0, result.output
        status = json.loads(result.stdout)
        assert status["chain_id"] == started["chain_id"]
        assert status["kind"] == "rpc"
        assert status["block_number"] == 0
        assert status["accounts"][0]["address"] == "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
        assert status["accounts"][0]["balance_wei"] > 0
        assert [n["kind"] for n in status["local_nodes"] if n["running"]] == ["anvil"]

        text = runner.invoke(main, ["chain", "status", "--rpc", URL, "--accounts", "1"])
        assert text.exit_code == 0, text.output
        assert "chain id  1337" in text.output or f"chain id  {started['chain_id']}" in text.output
    finally:
        result = runner.invoke(main, ["chain", "down", "--json"])
    assert result.exit_code == 0, result.output
    assert [s["pid"] for s in json.loads(result.stdout)["stopped"]] == [started["pid"]]
    assert not _alive(started["pid"])
    assert not (chainfl_home / "nodes" / "anvil.pid").exists()

    result = runner.invoke(main, ["chain", "down"])
    assert result.exit_code == 0 and "no local node" in result.output


def test_status_of_the_embedded_default_chain(runner, chainfl_home, monkeypatch):
    monkeypatch.delenv("CHAINFL_RPC", raising=False)
    result = runner.invoke(main, ["chain", "status", "--json", "--accounts", "3"])
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    assert status["kind"] == "eth-tester"
    assert len(status["accounts"]) == 3
    assert (chainfl_home / "chain" / "chain.sqlite").exists()


def test_status_of_an_unreachable_node_is_a_clean_error(runner):
    result = runner.invoke(main, ["chain", "status", "--rpc", "http://127.0.0.1:9"])
    assert result.exit_code == 1
    assert "chainfl chain up" in result.output
    assert "Traceback" not in result.output
