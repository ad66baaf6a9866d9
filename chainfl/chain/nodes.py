"""Local development nodes (Ganache, Anvil) as child processes.

Like ape's ``SubprocessProvider``: explicit :meth:`LocalNode.start` / :meth:`LocalNode.stop`, a
readiness wait (``eth_chainId`` answers) with a timeout that reports the log tail, clean shutdown of
the whole process group, and context-manager use. The node runs in its own session, so it outlives
the process that started it when that process detaches (``chainfl chain up``); a pid file
``<log_dir>/<kind>.pid`` (JSON: pid, url, kind, log) lets another process find and stop it
(:func:`read_pid_file`, :func:`stop_pid_file`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Sequence

from chainfl.config import NodeSettings
from chainfl.errors import ChainError, ConfigError
from chainfl.tools import find_tool

log = logging.getLogger(__name__)

KINDS = ("ganache", "anvil")


def rpc_request(url: str, method: str, params: list | None = None, timeout: float = 2.0):
    """One JSON-RPC call with the standard library; returns ``result`` or raises OSError/ValueError."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        reply = json.loads(response.read())
    if "error" in reply:
        raise ValueError(f"{method}: {reply['error']}")
    return reply["result"]


def node_command(kind: str, settings: NodeSettings, port: int) -> list[str]:
    """The command line that starts a ``kind`` node from ``settings`` on ``port``."""
    if kind == "ganache":
        return [str(find_tool("ganache")),
                "--server.host", settings.host, "--server.port", str(port),
                "--wallet.mnemonic", settings.mnemonic,
                "--chain.chainId", str(settings.chain_id),
                "--wallet.totalAccounts", str(settings.account_count),
                "--wallet.defaultBalance", str(settings.account_balance_eth),
                "--miner.blockTime", str(settings.block_time),
                "--miner.blockGasLimit", str(settings.gas_limit),
                "--chain.hardfork", "shanghai", "--logging.quiet"]
    if kind == "anvil":
        command = [str(find_tool("anvil")),
                   "--host", settings.host, "--port", str(port),
                   "--mnemonic", settings.mnemonic,
                   "--chain-id", str(settings.chain_id),
                   "--accounts", str(settings.account_count),
                   "--balance", str(settings.account_balance_eth),
                   "--gas-limit", str(settings.gas_limit),
                   "--hardfork", "shanghai", "--silent"]
        if settings.block_time > 0:
            command += ["--block-time", str(settings.block_time)]
        return command
    raise ConfigError(f"unknown node kind {kind!r}; choose one of {', '.join(KINDS)}")


def _free_port(host: str) -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _tail(path: Path | None, lines: int = 20) -> str:
    if path is None or not path.exists():
        return "(no log)"
    text = path.read_text(errors="replace").strip().splitlines()[-lines:]
    return "\n".join(text) or "(log is empty)"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as dead.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def _kill_group(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM the process group led by ``pid``, then SIGKILL whatever is left after ``timeout``."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.05)
    raise ChainError(f"node process {pid} did not stop after SIGKILL")


class LocalNode:
    """A Ganache or Anvil process started from ``settings`` (``ganache.env``).

    ``port`` None takes ganache.env's port for the kind (CHAIN_PORT / ANVIL_PORT); ``port=0`` picks
    a free port (parallel test sessions). ``log_dir`` holds ``<kind>.log`` and ``<kind>.pid``
    (a fresh temporary directory when None, and no pid file is written there). ``extra_args`` go
    to the node's command line after the settings, e.g. ``("--prune-history",)`` for an Anvil that
    keeps only the latest state (an ordinary, non-archive node) or ``("--timestamp", "1700000000")``
    for a fixed genesis time.
    """

    def __init__(self, kind: str, settings: NodeSettings, port: int | None = None,
                 log_dir: str | Path | None = None, extra_args: Sequence[str] = ()):
        if kind not in KINDS:
            raise ConfigError(f"unknown node kind {kind!r}; choose one of {', '.join(KINDS)}")
        self.kind = kind
        self.settings = settings
        if port == 0:  # any free port
            port = _free_port(settings.host)
        self.port = int(port) if port else (settings.anvil_port if kind == "anvil" else settings.port)
        self.log_dir = Path(log_dir) if log_dir else None
        self.extra_args = tuple(str(a) for a in extra_args)
        self.process: subprocess.Popen | None = None
        self.log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.port}"

    @property
    def pid_file(self) -> Path | None:
        return self.log_dir / f"{self.kind}.pid" if self.log_dir else None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self, timeout: float = 60.0) -> "LocalNode":
        """Start the node and wait until it answers ``eth_chainId`` with the configured chain id."""
        if self.process is not None:
            raise ChainError(f"{self.kind} at {self.url} is already started (pid {self.pid})")
        try:
            answer = rpc_request(self.url, "eth_chainId", timeout=0.5)
        except (OSError, ValueError):
            answer = None
        if answer is not None:
            raise ChainError(f"something already answers at {self.url} (chain id {int(answer, 16)}); "
                             f"stop it (`chainfl chain down`) or use another port")
        command = node_command(self.kind, self.settings, self.port) + list(self.extra_args)
        log_dir = self.log_dir or Path(tempfile.mkdtemp(prefix=f"chainfl-{self.kind}-"))
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{self.kind}.log"
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_file,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        log.info("started %s (pid %s) on %s, log %s", self.kind, self.process.pid, self.url, self.log_path)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        if self.pid_file is not None:  # written atomically (rename)
            tmp = self.pid_file.with_suffix(".pid.tmp")
            tmp.write_text(json.dumps({"pid": self.process.pid, "kind": self.kind, "url": self.url,
                                       "log": str(self.log_path), "started": int(time.time())}))
            tmp.replace(self.pid_file)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise ChainError(f"{self.kind} exited with code {self.process.returncode} before answering "
                                 f"at {self.url}; log {self.log_path}:\n{_tail(self.log_path)}")
            try:
                chain_id = int(rpc_request(self.url, "eth_chainId", timeout=1.0), 16)
            except (OSError, ValueError):
                chain_id = None
            if chain_id is not None:
                if chain_id != self.settings.chain_id:
                    raise ChainError(f"{self.kind} at {self.url} reports chain id {chain_id}, expected "
                                     f"{self.settings.chain_id} (CHAIN_ID in ganache.env)")
                return
            if time.monotonic() > deadline:
                raise ChainError(f"{self.kind} did not answer at {self.url} within {timeout:.0f} s; "
                                 f"log {self.log_path}:\n{_tail(self.log_path)}")
            time.sleep(0.1)

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the node's whole process group (SIGTERM, then SIGKILL) and remove the pid file."""
        if self.process is not None:
            if self.process.poll() is None:
                _kill_group(self.process.pid, timeout)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:  # pragma: no cover - killed above
                pass
            self.process = None
        if self.pid_file is not None and self.pid_file.exists():
            info = read_pid_file(self.pid_file)
            if info is None or not _alive(info["pid"]):
                self.pid_file.unlink(missing_ok=True)

    def __enter__(self) -> "LocalNode":
        if self.process is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<LocalNode {self.kind} {self.url} pid={self.pid}>"


def read_pid_file(path: Path) -> dict | None:
    """The node record in a pid file, or None if the file is missing or unreadable."""
    try:
        info = json.loads(Path(path).read_text())
        info["pid"] = int(info["pid"])
        return info
    except (OSError, ValueError, KeyError, TypeError):
        return None


def stop_pid_file(path: Path, timeout: float = 10.0) -> dict | None:
    """Stop the node recorded in ``path`` (from any process) and remove the file.

    Returns the record of the node that was stopped, or None when no node was recorded or it had
    already exited.
    """
    path = Path(path)
    info = read_pid_file(path)
    if info is None:
        path.unlink(missing_ok=True)
        return None
    stopped = None
    if _alive(info["pid"]):
        _kill_group(info["pid"], timeout)
        stopped = info
    path.unlink(missing_ok=True)
    return stopped
