"""A local js-ipfs daemon for development and tests (the IPFS side of ``chainfl``'s test run).

Kubo cannot be installed from the package registries this project uses, so the daemon is
js-ipfs (npm ``ipfs@0.66.1``, pinned in ``package.json``), which speaks the same Kubo RPC API.
:class:`IpfsDaemon` keeps its repository in ``repo_dir`` and is strictly local:

* ``jsipfs init --empty-repo`` once, then the config is rewritten so that nothing reaches
  out: ``Bootstrap=[]``, ``Addresses.Delegates=[]``, MDNS and WebRTC-star off, every address on
  127.0.0.1 with the ports given here (gateway and swarm are off unless a port is given; the
  gRPC-over-websocket server js-ipfs always starts gets a free port);
* ``jsipfs daemon --offline`` in its own process group; :meth:`start` waits until
  ``POST /api/v0/id`` answers; :meth:`stop` terminates the whole group (SIGTERM, then SIGKILL).

Usage::

    with IpfsDaemon(tmp_dir, api_port=15002) as daemon:
        store = open_store(daemon.url)      # "ipfs://127.0.0.1:15002"
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from chainfl.errors import ChainflError, StoreUnavailableError
from chainfl.tools import find_tool

log = logging.getLogger(__name__)

HOST = "127.0.0.1"


class IpfsDaemon:
    """A js-ipfs daemon bound to 127.0.0.1, with explicit start/stop (also a context manager)."""

    def __init__(self, repo_dir: str | os.PathLike, api_port: int = 5002,
                 gateway_port: int | None = None, swarm_port: int | None = None):
        self.repo_dir = Path(repo_dir)
        self.api_port = int(api_port)
        self.gateway_port = gateway_port
        self.swarm_port = swarm_port
        self._proc: subprocess.Popen | None = None
        self._log_file = None

    # --- public ----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The store URL of this daemon, for :func:`chainfl.storage.open_store`."""
        return f"ipfs://{HOST}:{self.api_port}"

    @property
    def log_path(self) -> Path:
        """Where the daemon's stdout and stderr go."""
        return self.repo_dir / "daemon.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 90.0) -> "IpfsDaemon":
        """Initialise the repository if needed, start the daemon and wait until its API answers.

        Raises :class:`StoreUnavailableError` (with the log tail) if the API port is already
        taken, the process exits, or the API does not answer within ``timeout`` seconds.
        """
        if self.running:
            return self
        if _api_answers(self.api_port):
            raise StoreUnavailableError(
                f"Port {self.api_port} on {HOST} already answers as an IPFS API — stop that daemon "
                f"or choose another api_port (or use it directly: --store ipfs://{HOST}:{self.api_port}).")
        jsipfs = find_tool("jsipfs")
        self.repo_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, IPFS_PATH=str(self.repo_dir))
        if not (self.repo_dir / "config").exists():
            self._run_init(jsipfs, env)
        self._configure()
        self._log_file = open(self.log_path, "ab")
        log.info("starting js-ipfs daemon (repo %s, API port %d)", self.repo_dir, self.api_port)
        self._proc = subprocess.Popen(
            [str(jsipfs), "daemon", "--offline"], env=env, stdin=subprocess.DEVNULL,
            stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._cleanup()
                raise StoreUnavailableError(
                    f"js-ipfs daemon exited with code {code} before its API answered. "
                    f"Log tail ({self.log_path}):\n{self._log_tail()}")
            if _api_answers(self.api_port):
                log.info("js-ipfs daemon ready at %s", self.url)
                return self
            time.sleep(0.25)
        self.stop()
        raise StoreUnavailableError(
            f"js-ipfs daemon did not answer on {HOST}:{self.api_port} within {timeout:.0f} s. "
            f"Log tail ({self.log_path}):\n{self._log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the daemon's process group (SIGTERM, then SIGKILL after ``timeout``)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(timeout=timeout)
        if proc is not None:
            # Children (if any survived their parent) share the group: make sure they are gone.
            _signal_group(proc, signal.SIGKILL)
        self._cleanup()

    def __enter__(self) -> "IpfsDaemon":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- internals -------------------------------------------------------------------------
    def _run_init(self, jsipfs: Path, env: dict) -> None:
        result = subprocess.run([str(jsipfs), "init", "--empty-repo"], env=env,
                                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise StoreUnavailableError(
                f"`jsipfs init --empty-repo` failed in {self.repo_dir} (exit {result.returncode}): "
                f"{(result.stderr or result.stdout).strip()[-2000:]}")

    def _configure(self) -> None:
        """Rewrite the repository config: local addresses only, no discovery, no bootstrap."""
        path = self.repo_dir / "config"
        cfg = json.loads(path.read_text())
        addresses = cfg.setdefault("Addresses", {})
        addresses["API"] = f"/ip4/{HOST}/tcp/{self.api_port}"
        addresses["Gateway"] = f"/ip4/{HOST}/tcp/{self.gateway_port}" if self.gateway_port else []
        addresses["RPC"] = f"/ip4/{HOST}/tcp/0"   # gRPC-over-websocket: always started, any free port
        addresses["Swarm"] = [f"/ip4/{HOST}/tcp/{self.swarm_port}"] if self.swarm_port else []
        addresses["Announce"] = []
        addresses["NoAnnounce"] = []
        addresses["Delegates"] = []
        cfg["Bootstrap"] = []
        discovery = cfg.setdefault("Discovery", {})
        discovery["MDNS"] = {"Enabled": False, "Interval": 10}
        discovery["webRTCStar"] = {"Enabled": False}
        cfg.setdefault("Swarm", {})["DisableNatPortMap"] = True
        cfg.setdefault("Pubsub", {})["Enabled"] = False
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cfg, indent=2))
        os.replace(tmp, path)

    def _log_tail(self, n: int = 30) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n:])

    def _cleanup(self) -> None:
        self._proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _api_answers(port: int, timeout: float = 1.0) -> bool:
    """True if ``POST /api/v0/id`` on 127.0.0.1:``port`` returns JSON with an ``ID``."""
    req = urllib.request.Request(f"http://{HOST}:{port}/api/v0/id", data=b"", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return "ID" in json.loads(resp.read() or b"{}")
    except (OSError, ValueError, urllib.error.URLError):
        return False


def main(argv: list[str] | None = None) -> None:
    """``python -m chainfl.storage.daemon [--repo DIR] [--port 5002]``: run until Ctrl-C."""
    import argparse

    from chainfl import config

    parser = argparse.ArgumentParser(description="Run a local, offline js-ipfs daemon for chainfl.")
    parser.add_argument("--repo", default=str(config.home_dir() / "ipfs"), help="IPFS repository directory")
    parser.add_argument("--port", type=int, default=5002, help="RPC API port (default 5002)")
    args = parser.parse_args(argv)
    daemon = IpfsDaemon(args.repo, api_port=args.port)
    try:
        daemon.start()
    except ChainflError as e:          # e.g. js-ipfs not installed: one line, not a traceback
        raise SystemExit(f"Error: {e}") from None
    print(f"IPFS daemon ready: --store {daemon.url}  (repo {daemon.repo_dir}; Ctrl-C stops it)", flush=True)
    def _interrupt(*_):
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, _interrupt)
        while daemon.running:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        daemon.stop()


if __name__ == "__main__":
    main()
