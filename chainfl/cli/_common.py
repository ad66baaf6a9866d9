"""Options shared by several commands (each reads its environment variable)."""

from __future__ import annotations

import json as _json

import click

from chainfl import config

rpc_option = click.option(
    "--rpc", envvar="CHAINFL_RPC", default=None, show_envvar=True,
    help="Chain URL: eth-tester:// (embedded, default) or http://host:port of a JSON-RPC node.")
store_option = click.option(
    "--store", envvar="CHAINFL_STORE", default=None, show_envvar=True,
    help="Store URL: file://DIR (embedded, default under CHAINFL_HOME) or ipfs://host:port (Kubo RPC API).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")


def resolve_rpc(rpc: str | None) -> str:
    return rpc or config.default_rpc()


def resolve_store(store: str | None) -> str:
    return store or config.default_store()


def echo_json(obj) -> None:
    click.echo(_json.dumps(obj, indent=2, sort_keys=True, default=str))


def console():
    """A rich console on stdout: the terminal's width, or 200 columns when piped, so that
    addresses, CIDs and paths are never cut (tables also fold, never truncate, long values)."""
    import sys

    from rich.console import Console

    return Console(soft_wrap=True) if sys.stdout.isatty() else Console(width=200)


def talk(quiet: bool = False) -> None:
    """Let the agents' and the coordinator's progress lines (INFO: one per round, handoff,
    flag, outage) through to stderr, unless ``quiet``; the library itself adds no handler."""
    import logging

    if quiet:
        return
    for name in ("chainfl.agents.coordinator", "chainfl.agents.node", "chainfl.agents.retry"):
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
