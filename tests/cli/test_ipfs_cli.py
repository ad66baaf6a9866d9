"""``chainfl ipfs up|down|status``: a real js-ipfs daemon started detached, used, stopped."""

import json
import socket

from click.testing import CliRunner

from chainfl.cli import main
from chainfl.storage import open_store


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ipfs_up_status_down(chainfl_home):
    runner = CliRunner()
    port = _port()
    up = runner.invoke(main, ["ipfs", "up", "--port", str(port), "--json"])
    assert up.exit_code == 0, up.output
    record = json.loads(up.output[up.output.index("{"):])
    try:
        assert record["url"] == f"ipfs://127.0.0.1:{port}"
        status = runner.invoke(main, ["ipfs", "status", "--json"])
        assert status.exit_code == 0 and json.loads(status.output)["answers"] is True
        again = runner.invoke(main, ["ipfs", "up", "--port", str(port)])
        assert again.exit_code == 1 and "already running" in again.output
        store = open_store(record["url"])
        cid = store.put(b"through chainfl ipfs up")
        assert store.get(cid, timeout=10) == b"through chainfl ipfs up"
    finally:
        down = runner.invoke(main, ["ipfs", "down"])
    assert down.exit_code == 0 and "stopped the IPFS daemon" in down.output
    gone = runner.invoke(main, ["ipfs", "status"])
    assert gone.exit_code == 0 and "no IPFS daemon recorded" in gone.output
    assert "no IPFS daemon was running" in runner.invoke(main, ["ipfs", "down"]).output
