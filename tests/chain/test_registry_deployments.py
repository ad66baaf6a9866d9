"""Recording and finding the deployed registry per chain; ``chainfl deploy``."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from chainfl.chain import connect
from chainfl.chain.deployments import (
    artifact_code_sha256, chain_key, deploy_registry, find_deployment, load_deployments, record, registry_address,
    registry_for)
from chainfl.cli import main
from chainfl.errors import DeploymentError


def test_deploy_records_and_reuses_on_every_chain(chain_url, tmp_path):
    home = tmp_path / "home"
    with connect(chain_url) as chain:
        registry, entry, created = deploy_registry(chain, home=home)
        assert created
        assert entry["address"] == registry.address and entry["chain_id"] == chain.chain_id
        assert entry["admin"] == chain.accounts[0].address
        assert entry["code_sha256"] == artifact_code_sha256()
        assert entry["block"] == chain.w3.eth.get_transaction_receipt(entry["tx"])["blockNumber"]
        assert list(load_deployments(home)) == [chain_key(chain)]

        again, _, created_again = deploy_registry(chain, home=home)
        assert not created_again and again.address == registry.address
        assert registry_for(chain, home=home).address == registry.address

        forced, forced_entry, created_forced = deploy_registry(chain, home=home, force=True)
        assert created_forced and forced.address != registry.address
        assert find_deployment(chain, home=home)["address"] == forced.address


def test_registry_for_without_a_record_says_to_deploy(tmp_path):
    with connect("eth-tester://memory") as chain:
        assert registry_address(chain, home=tmp_path) is None
        with pytest.raises(DeploymentError, match="chainfl deploy"):
            registry_for(chain, home=tmp_path)


def test_record_an_existing_registry(tmp_path):
    from chainfl.chain.registry import Registry

    with connect("eth-tester://memory") as chain:
        registry = Registry.deploy(chain, chain.accounts[0])
        entry = record(chain, registry.address, home=tmp_path)
        assert entry["address"] == registry.address and entry["block"] is None
        assert registry_address(chain, home=tmp_path) == registry.address
        with pytest.raises(DeploymentError, match="no contract"):
            record(chain, chain.accounts[3].address, home=tmp_path)


def test_recorded_address_without_code_is_refused_and_redeployed(tmp_path):
    # a record (as if left from a chain that was reset) pointing at an address without code; the
    # embedded chain's genesis hash depends on the start time, so two chains started in the same
    # second share a key, which is why a recorded address is always checked for chainfl's code
    with connect("eth-tester://memory") as first:
        deploy_registry(first, home=tmp_path)
        stale = find_deployment(first, home=tmp_path)
    with connect("eth-tester://memory") as second:
        path = tmp_path / "deployments.json"
        path.write_text(json.dumps({chain_key(second): stale}))
        with pytest.raises(DeploymentError, match="no contract"):
            registry_for(second, home=tmp_path)
        fresh, _, created = deploy_registry(second, home=tmp_path)
        assert created and registry_for(second, home=tmp_path).address == fresh.address


def test_unreadable_deployments_file_is_a_clear_error(tmp_path):
    (tmp_path / "deployments.json").write_text("{not json")
    with pytest.raises(DeploymentError, match="unreadable"):
        load_deployments(tmp_path)


def test_cli_deploy_on_the_persisted_embedded_chain(chainfl_home):
    runner = CliRunner()
    first = runner.invoke(main, ["deploy", "--rpc", "eth-tester://", "--json"])
    assert first.exit_code == 0, first.output
    entry = json.loads(first.output)
    assert entry["created"] is True and entry["address"].startswith("0x")
    # a second process-like invocation finds the same registry on the persisted chain
    second = runner.invoke(main, ["deploy", "--rpc", "eth-tester://"])
    assert second.exit_code == 0, second.output
    assert "already deployed" in second.output and entry["address"] in second.output
    with connect("eth-tester://", home=chainfl_home) as chain:
        assert registry_for(chain, home=chainfl_home).address == entry["address"]
