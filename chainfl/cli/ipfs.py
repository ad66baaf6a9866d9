"""``chainfl ipfs up|down|status``: run chainfl's local, offline IPFS daemon (js-ipfs) beside
``chainfl chain up|down``: its repository, pid file and log live in CHAINFL_HOME/ipfs."""

from __future__ import annotations

import json
import os

import click

from chainfl import config
from chainfl.cli._common import echo_json, json_option
from chainfl.errors import StoreUnavailableError


def _dir():
    return config.home_dir() / "ipfs"


def _pid_file():
    return _dir() / "daemon.pid"


def _record() -> dict | None:
    from chainfl.chain.nodes import _alive, read_pid_file
    from chainfl.storage.daemon import _api_answers

    info = read_pid_file(_pid_file())
    if info is not None:
        info["running"] = _alive(info["pid"])
        info["answers"] = info["running"] and _api_answers(int(info["port"]))
    return info


@click.group("ipfs")
def ipfs_group() -> None:
    """Start, stop and inspect a local, offline IPFS daemon (js-ipfs, Kubo RPC API)."""


@ipfs_group.command("up")
@click.option("--port", type=int, default=5002, show_default=True, help="RPC API port (js-ipfs: 5002, Kubo: 5001).")
@click.option("--timeout", type=float, default=90.0, show_default=True, help="Seconds to wait until it answers.")
@json_option
def up(port: int, timeout: float, as_json: bool) -> None:
    """Start the daemon (repository CHAINFL_HOME/ipfs/repo), wait until its API answers, and leave
    it running; stop it with `chainfl ipfs down`."""
    from chainfl.storage.daemon import IpfsDaemon

    info = _record()
    if info is not None and info["running"]:
        raise StoreUnavailableError(f"an IPFS daemon is already running at {info['url']} (pid {info['pid']}); "
                                    f"stop it first with `chainfl ipfs down`")
    config.writable_dir(_dir(), "IPFS directory")
    daemon = IpfsDaemon(_dir() / "repo", api_port=port).start(timeout=timeout)
    pid = daemon._proc.pid
    record = {"kind": "js-ipfs", "pid": pid, "port": port, "url": daemon.url, "repo": str(daemon.repo_dir),
              "log": str(daemon.log_path)}
    tmp = _pid_file().with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, _pid_file())
    daemon._proc = None               # detach: it runs on in its own session until `chainfl ipfs down`
    if as_json:
        echo_json(record)
    else:
        click.echo(f"IPFS daemon running at {daemon.url} (pid {pid}); log: {daemon.log_path}")
        click.echo(f"use it with:  export CHAINFL_STORE={daemon.url}   (or --store {daemon.url})")


@ipfs_group.command("down")
@json_option
def down(as_json: bool) -> None:
    """Stop the daemon started with `chainfl ipfs up` (its repository and blobs are kept)."""
    from chainfl.chain.nodes import _kill_group

    info = _record()
    stopped = None
    if info is not None and info["running"]:
        _kill_group(info["pid"])
        stopped = info
    _pid_file().unlink(missing_ok=True)
    if as_json:
        echo_json({"stopped": stopped})
    elif stopped:
        click.echo(f"stopped the IPFS daemon at {stopped['url']} (pid {stopped['pid']})")
    else:
        click.echo("no IPFS daemon was running")


@ipfs_group.command("status")
@json_option
def status(as_json: bool) -> None:
    """Whether the daemon of `chainfl ipfs up` runs and answers."""
    info = _record()
    if as_json:
        echo_json(info or {"running": False})
        return
    if info is None:
        click.echo("no IPFS daemon recorded (start one with `chainfl ipfs up`)")
    elif info["answers"]:
        click.echo(f"IPFS daemon running at {info['url']} (pid {info['pid']}, repo {info['repo']})")
    else:
        state = "running but not answering" if info["running"] else "not running (stale pid file)"
        click.echo(f"IPFS daemon at {info['url']} (pid {info['pid']}): {state}; log: {info['log']}")


commands = [ipfs_group]
