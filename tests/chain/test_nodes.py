"""LocalNode: real Ganache/Anvil processes started, checked, and stopped (on their own ports, so
the session fixtures' nodes and a developer's `chainfl chain up` are not disturbed)."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from chainfl.chain.nodes import LocalNode, _alive, node_command, read_pid_file, rpc_request, stop_pid_file
from chainfl.config import load_node_settings
from chainfl.errors import ChainError, ConfigError

PORTS = {"anvil": 18651, "ganache": 18652}


@pytest.fixture(scope="module")
def settings():
    return load_node_settings()


@pytest.mark.parametrize("kind", ["anvil", "ganache"])
def test_node_starts_answers_with_the_configured_chain_and_stops_cleanly(kind, settings, tmp_path):
    node = LocalNode(kind, settings, port=PORTS[kind], log_dir=tmp_path)

    with node:
        pid = node.pid
        assert node.url == f"http://{settings.host}:{PORTS[kind]}"
        assert int(rpc_request(node.url, "eth_chainId"), 16) == settings.chain_id
        accounts = rpc_request(node.url, "eth_accounts")
        assert len(accounts) == settings.account_count
        assert accounts[0].lower() == "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266"
        record = read_pid_file(tmp_path / f"{kind}.pid")
        assert record["pid"] == pid and record["url"] == node.url

    assert not _alive(pid)
    assert not (tmp_path / f"{kind}.pid").exists()
    with pytest.raises(OSError):
        rpc_request(node.url, "eth_chainId", timeout=0.5)


def test_a_node_recorded_in_a_pid_file_can_be_stopped_by_another_caller(settings, tmp_path):
    node = LocalNode("anvil", settings, port=PORTS["anvil"], log_dir=tmp_path).start(timeout=60)
    pid = node.pid
    node.process = None  # forget it, as a detached `chainfl chain up` does

    stopped = stop_pid_file(tmp_path / "anvil.pid")

    assert stopped["pid"] == pid
    assert not _alive(pid)
    assert not (tmp_path / "anvil.pid").exists()
    assert stop_pid_file(tmp_path / "anvil.pid") is None


def test_a_busy_port_is_refused(settings, tmp_path):
    with LocalNode("anvil", settings, port=PORTS["anvil"], log_dir=tmp_path / "a"):
        second = LocalNode("anvil", settings, port=PORTS["anvil"], log_dir=tmp_path / "b")
        with pytest.raises(ChainError, match="already answers"):
            second.start(timeout=10)


def test_a_node_that_exits_reports_its_log(settings, tmp_path):
    bad = replace(settings, mnemonic="not a valid mnemonic at all")
    node = LocalNode("anvil", bad, port=PORTS["anvil"], log_dir=tmp_path)
    with pytest.raises(ChainError) as info:
        node.start(timeout=30)
    assert "exited with code" in str(info.value)
    assert str(tmp_path / "anvil.log") in str(info.value)
    assert not node.is_running()


def test_unknown_kind_is_a_config_error(settings):
    with pytest.raises(ConfigError, match="ganache, anvil"):
        LocalNode("geth", settings)


def test_commands_follow_ganache_env(settings):
    tuned = replace(settings, block_time=2, chain_id=4242, account_count=7)
    anvil = node_command("anvil", tuned, 9999)
    ganache = node_command("ganache", tuned, 9998)
    assert anvil[anvil.index("--block-time") + 1] == "2"
    assert anvil[anvil.index("--chain-id") + 1] == "4242"
    assert anvil[anvil.index("--accounts") + 1] == "7"
    assert anvil[anvil.index("--hardfork") + 1] == "shanghai"
    assert ganache[ganache.index("--miner.blockTime") + 1] == "2"
    assert ganache[ganache.index("--server.port") + 1] == "9998"
    assert ganache[ganache.index("--chain.hardfork") + 1] == "shanghai"
    assert "--block-time" not in node_command("anvil", replace(tuned, block_time=0), 9999)
    assert os.path.basename(anvil[0]) == "anvil"


def test_port_zero_picks_a_free_port(settings):
    with LocalNode("anvil", settings, port=0) as node:
        assert node.port not in (0, settings.anvil_port)
        assert int(rpc_request(node.url, "eth_chainId"), 16) == settings.chain_id
        assert node.pid_file is None and node.log_path.exists()
