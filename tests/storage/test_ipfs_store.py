"""The IPFS daemon store: connection errors, timeouts, and bytes that do not match their CID."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from chainfl.errors import IntegrityError, StoreUnavailableError
from chainfl.storage import compute_cid, open_store
from chainfl.storage.daemon import IpfsDaemon


class _LyingDaemon(BaseHTTPRequestHandler):
    """A fake Kubo RPC API whose `cat` returns other bytes than the CID names (a hostile node)."""

    def do_POST(self):  # noqa: N802 (http.server API)
        if self.path.startswith("/api/v0/id"):
            body = json.dumps({"ID": "12D3KooFake", "AgentVersion": "liar/0.0.1"}).encode()
        elif self.path.startswith("/api/v0/cat"):
            body = b"poisoned weights"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def lying_daemon_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _LyingDaemon)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"ipfs://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_bytes_not_matching_the_cid_are_refused(lying_daemon_url):
    store = open_store(lying_daemon_url)
    cid = compute_cid(b"honest weights")

    with pytest.raises(IntegrityError) as info:
        store.get(cid, timeout=5)

    assert info.value.cid == cid
    assert info.value.actual == compute_cid(b"poisoned weights")


def test_no_daemon_is_store_unavailable_with_advice():
    with pytest.raises(StoreUnavailableError) as info:
        open_store("ipfs://127.0.0.1:1")

    message = str(info.value)
    assert "127.0.0.1:1" in message and "--store file://" in message


def test_http_url_is_the_same_daemon(daemon_url):
    http_url = daemon_url.replace("ipfs://", "http://")
    cid = open_store(daemon_url).put(b"same daemon")

    assert open_store(http_url).get(cid, timeout=10) == b"same daemon"


def test_second_daemon_on_a_taken_port_refuses_to_start(daemon_url, tmp_path):
    port = int(daemon_url.rsplit(":", 1)[1])
    daemon = IpfsDaemon(tmp_path / "repo", api_port=port)

    with pytest.raises(StoreUnavailableError, match="already answers"):
        daemon.start(timeout=5)
    assert not daemon.running


def test_daemon_url_and_config_are_local_only(tmp_path):
    daemon = IpfsDaemon(tmp_path / "repo", api_port=15999, gateway_port=None, swarm_port=None)
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "config").write_text(json.dumps({
        "Addresses": {"Swarm": ["/ip4/0.0.0.0/tcp/4002"], "API": "/ip4/127.0.0.1/tcp/5002",
                      "Gateway": "/ip4/127.0.0.1/tcp/9090", "Delegates": ["/dns4/x/tcp/443/https"]},
        "Bootstrap": ["/dnsaddr/bootstrap.libp2p.io/p2p/Qm"],
        "Discovery": {"MDNS": {"Enabled": True}, "webRTCStar": {"Enabled": True}}}))

    daemon._configure()

    cfg = json.loads((tmp_path / "repo" / "config").read_text())
    assert daemon.url == "ipfs://127.0.0.1:15999"
    assert cfg["Addresses"]["API"] == "/ip4/127.0.0.1/tcp/15999"
    assert cfg["Addresses"]["Swarm"] == [] and cfg["Addresses"]["Gateway"] == []
    assert cfg["Addresses"]["Delegates"] == [] and cfg["Bootstrap"] == []
    assert cfg["Discovery"]["MDNS"]["Enabled"] is False
    assert cfg["Discovery"]["webRTCStar"]["Enabled"] is False


@pytest.mark.slow
def test_daemon_context_manager_starts_serves_and_stops_its_process_group(daemon_url, tmp_path):
    import os

    assert daemon_url != "ipfs://127.0.0.1:15093"      # a second, independent daemon

    with IpfsDaemon(tmp_path / "repo", api_port=15093) as daemon:
        pgid = daemon._proc.pid
        cid = open_store(daemon.url).put(b"lifecycle")
        assert open_store(daemon.url).get(cid, timeout=10) == b"lifecycle"

    assert not daemon.running
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)                # no process of the daemon's group is left
    with pytest.raises(StoreUnavailableError):
        open_store(daemon.url)


def test_a_daemon_that_is_starting_or_stopping_is_unavailable_not_an_error():
    from chainfl.storage.ipfs import is_transient

    assert is_transient("Database is not open") and is_transient("Error: not started")
    assert not is_transient("invalid path") and not is_transient("block too big")
