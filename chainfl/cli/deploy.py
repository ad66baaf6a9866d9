"""``chainfl deploy``: deploy the registry on a chain and record its address for later commands."""

from __future__ import annotations

import click

from chainfl.cli._common import echo_json, json_option, resolve_rpc, rpc_option


@click.command("deploy")
@rpc_option
@click.option("--force", is_flag=True, help="Deploy a new registry even if a verified one is recorded.")
@json_option
def deploy_cmd(rpc: str | None, force: bool, as_json: bool) -> None:
    """Deploy the chainfl registry (admin: dev account 0) and record it under CHAINFL_HOME.

    If a registry is already recorded for this chain and the code at its address is chainfl's,
    it is reused (use --force to deploy another).
    """
    from chainfl.chain import connect
    from chainfl.chain.deployments import deploy_registry, deployments_path

    with connect(resolve_rpc(rpc)) as chain:
        registry, entry, created = deploy_registry(chain, force=force)
    if as_json:
        echo_json({**entry, "created": created})
        return
    verb = "deployed" if created else "already deployed"
    block = f" in block {entry['block']}" if entry.get("block") is not None else ""
    click.echo(f"Registry {verb} at {registry.address} on {entry['url']} (chain id {entry['chain_id']}){block}; "
               f"admin {entry['admin']}. Recorded in {deployments_path() / 'deployments.json'}.")


commands = [deploy_cmd]
