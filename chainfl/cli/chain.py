"""``chainfl chain up|down|status``: run a local development node and look at a chain."""

from __future__ import annotations

import click

from chainfl import config
from chainfl.cli._common import echo_json, json_option, resolve_rpc, rpc_option
from chainfl.errors import ChainError


def _nodes_dir():
    return config.home_dir() / "nodes"


def _recorded_nodes() -> list[dict]:
    from chainfl.chain.nodes import KINDS, _alive, read_pid_file

    nodes = []
    for kind in KINDS:
        info = read_pid_file(_nodes_dir() / f"{kind}.pid")
        if info is not None:
            info["running"] = _alive(info["pid"])
            nodes.append(info)
    return nodes


@click.group("chain")
def chain_group() -> None:
    """Start, stop and inspect the chain (a local Ganache/Anvil node from ganache.env)."""


@chain_group.command("up")
@click.option("--node", "kind", type=click.Choice(["ganache", "anvil"]), default="anvil", show_default=True,
              help="Which local node to start.")
@click.option("--port", type=int, default=None,
              help="JSON-RPC port [ganache.env: CHAIN_PORT for ganache, ANVIL_PORT for anvil].")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait until it answers.")
@json_option
def up(kind: str, port: int | None, timeout: float, as_json: bool) -> None:
    """Start a local node from ganache.env, wait until it answers, and leave it running.

    Its pid file and log go to CHAINFL_HOME/nodes/; stop it with `chainfl chain down`.
    """
    from chainfl.chain.nodes import LocalNode, _alive, read_pid_file

    pid_file = _nodes_dir() / f"{kind}.pid"
    info = read_pid_file(pid_file)
    if info is not None and _alive(info["pid"]):
        raise ChainError(f"{kind} is already running at {info['url']} (pid {info['pid']}); "
                         f"stop it first with `chainfl chain down --node {kind}`")
    settings = config.load_node_settings()
    node = LocalNode(kind, settings, port=port, log_dir=_nodes_dir())
    node.start(timeout=timeout)
    node.process = None  # detach: the node runs on in its own session; `chain down` stops it
    result = {"kind": kind, "url": node.url, "pid": read_pid_file(pid_file)["pid"],
              "chain_id": settings.chain_id, "log": str(node.log_path), "pid_file": str(pid_file)}
    if as_json:
        echo_json(result)
    else:
        click.echo(f"{kind} running at {node.url} (chain id {settings.chain_id}, pid {result['pid']})")
        click.echo(f"log: {node.log_path}")
        click.echo(f"use it with:  export CHAINFL_RPC={node.url}   (or --rpc {node.url})")


@chain_group.command("down")
@click.option("--node", "kind", type=click.Choice(["ganache", "anvil", "all"]), default="all", show_default=True)
@json_option
def down(kind: str, as_json: bool) -> None:
    """Stop local nodes started with `chainfl chain up`."""
    from chainfl.chain.nodes import KINDS, stop_pid_file

    kinds = KINDS if kind == "all" else (kind,)
    stopped = []
    for k in kinds:
        info = stop_pid_file(_nodes_dir() / f"{k}.pid")
        if info is not None:
            stopped.append(info)
    if as_json:
        echo_json({"stopped": stopped})
    elif stopped:
        for info in stopped:
            click.echo(f"stopped {info['kind']} at {info['url']} (pid {info['pid']})")
    else:
        click.echo("no local node was running")


@chain_group.command("status")
@rpc_option
@click.option("--accounts", "n_accounts", type=int, default=None,
              help="How many dev accounts to list [all ACCOUNT_COUNT].")
@json_option
def status(rpc: str | None, n_accounts: int | None, as_json: bool) -> None:
    """Show the chain at --rpc (block number, chain id, accounts) and the local nodes."""
    from chainfl.chain import connect

    url = resolve_rpc(rpc)
    with connect(url) as chain:
        accounts = chain.accounts if n_accounts is None else chain.accounts[:n_accounts]
        result = {
            "url": chain.url, "kind": chain.kind, "chain_id": chain.chain_id,
            "block_number": chain.block_number(), "latest_timestamp": chain.latest_timestamp(),
            "accounts": [{"index": i, "address": a.address,
                          "balance_wei": int(chain.w3.eth.get_balance(a.address))}
                         for i, a in enumerate(accounts)],
            "local_nodes": _recorded_nodes(),
        }
    if as_json:
        echo_json(result)
        return
    click.echo(f"chain     {result['url']} ({result['kind']})")
    click.echo(f"chain id  {result['chain_id']}")
    click.echo(f"block     {result['block_number']} (timestamp {result['latest_timestamp']})")
    click.echo(f"accounts  {len(result['accounts'])}")
    for entry in result["accounts"]:
        click.echo(f"  {entry['index']:>3}  {entry['address']}  {entry['balance_wei'] / 1e18:,.4f} ETH")
    for info in result["local_nodes"]:
        state = "running" if info["running"] else "not running (stale pid file)"
        click.echo(f"local node {info['kind']} at {info['url']} pid {info['pid']}: {state}")


commands = [chain_group]
