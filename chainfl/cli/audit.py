"""``chainfl audit``: rebuild a task's history from chain events and verify all of it.

Exit code 0 when the history verifies, 1 on any violation (each printed with its round/seq, node
and CID) or error.
"""

from __future__ import annotations

from pathlib import Path

import click

from chainfl.cli._common import (console, echo_json, json_option, resolve_rpc, resolve_store, rpc_option,
                                 store_option)
from chainfl.errors import ConfigError

registry_option = click.option(
    "--registry", "registry_address", envvar="CHAINFL_REGISTRY", default=None, show_envvar=True,
    help="Registry contract address (default: the one `chainfl deploy` recorded for this chain).")


def resolve_registry(chain, address: str | None):
    """The :class:`Registry` at ``address``, else the deployment `chainfl deploy` recorded for ``chain``."""
    from chainfl.chain import deployments
    from chainfl.chain.registry import Registry

    address = address or deployments.registry_address(chain)
    if not address:
        raise ConfigError(f"no registry address: pass --registry ADDRESS (or set CHAINFL_REGISTRY), or "
                          f"deploy one on {chain.url} with `chainfl deploy`")
    return Registry.at(chain, address)


@click.command("audit")
@click.option("--task", "task_id", type=int, required=True, help="Task id to audit.")
@rpc_option
@store_option
@registry_option
@click.option("--from-block", type=int, default=0, show_default=True,
              help="First block to read events from (the task's creation block or earlier).")
@click.option("--chunk", type=int, default=2000, show_default=True, help="Blocks per log query.")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Seconds to wait for each blob.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Also write a self-contained HTML report to this file.")
@json_option
@click.pass_context
def audit_cmd(ctx, task_id: int, rpc: str | None, store: str | None, registry_address: str | None,
              from_block: int, chunk: int, timeout: float, html_path: str | None, as_json: bool) -> None:
    """Verify task TASK: every blob against its on-chain digest, the handoff chain, every aggregate
    recomputed from its recorded inputs. Exits 1 on any violation, naming round, node and CID."""
    from chainfl.audit import audit_task
    from chainfl.audit.report import render_terminal, to_html
    from chainfl.chain import connect
    from chainfl.storage import open_store

    with connect(resolve_rpc(rpc), must_exist=True) as chain:
        registry = resolve_registry(chain, registry_address)
        report = audit_task(chain, registry, open_store(resolve_store(store)), task_id,
                            from_block=from_block, chunk=chunk, timeout=timeout)
    if html_path:
        Path(html_path).write_text(to_html(report), encoding="utf-8")
    if as_json:
        echo_json(report.to_dict())
    else:
        render_terminal(report, console())
        if html_path:
            click.echo(f"HTML report: {html_path}")
    if not report.ok:
        for v in report.violations:
            click.secho(f"VIOLATION {v}", fg="red", err=True)
        ctx.exit(1)


commands = [audit_cmd]
