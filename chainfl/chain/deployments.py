"""Where the registry is deployed, per chain, so separate commands find it.

``<CHAINFL_HOME>/deployments.json`` maps a chain key — ``"<chain id>:<genesis block hash>"``, so a
restarted Ganache (new genesis) or a reset embedded chain is a different chain — to the deployment:
address, block, transaction, admin, URL, time and the sha256 of the runtime code. Before a recorded
address is used, the code there is checked against the committed artifact.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import tempfile
from pathlib import Path

from chainfl import config
from chainfl.chain.registry import Registry, registry_artifact
from chainfl.errors import DeploymentError

FILE_NAME = "deployments.json"


def deployments_path(home: Path | str | None = None) -> Path:
    return Path(home) if home else config.home_dir()


def _file(home) -> Path:
    return deployments_path(home) / FILE_NAME


def chain_key(chain) -> str:
    """``"<chain id>:<genesis hash>"`` identifying one chain (not just one network id)."""
    genesis = chain.w3.eth.get_block(0)["hash"]
    text = bytes(genesis).hex()
    return f"{chain.chain_id}:{text if text.startswith('0x') else '0x' + text}"


def load_deployments(home=None) -> dict[str, dict]:
    """All recorded deployments (``{}`` when none). Raises :class:`DeploymentError` if unreadable."""
    path = _file(home)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DeploymentError(f"{path} is unreadable ({e}); fix or delete it and run `chainfl deploy`") from e
    if not isinstance(data, dict):
        raise DeploymentError(f"{path} is not a JSON object; delete it and run `chainfl deploy`")
    return data


def find_deployment(chain, home=None) -> dict | None:
    """The recorded deployment on ``chain``, or None."""
    return load_deployments(home).get(chain_key(chain))


def record_deployment(chain, registry: Registry, receipt=None, home=None) -> dict:
    """Record ``registry`` as the deployment on ``chain`` (atomically replaces the file)."""
    code = bytes(chain.w3.eth.get_code(registry.address))
    entry = {
        "address": registry.address,
        "chain_id": chain.chain_id,
        "url": chain.url,
        "admin": registry.admin(),
        "block": int(receipt["blockNumber"]) if receipt is not None else None,
        "tx": _hex(receipt["transactionHash"]) if receipt is not None else None,
        "code_sha256": hashlib.sha256(code).hexdigest(),
        "sources_sha256": registry.artifact["sourcesSha256"],
        "deployed_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    data = load_deployments(home)
    data[chain_key(chain)] = entry
    _write_atomic(_file(home), data)
    return entry


def registry_for(chain, home=None) -> Registry:
    """The recorded, verified registry on ``chain``. Raises :class:`DeploymentError` saying what to do."""
    entry = find_deployment(chain, home)
    if entry is None:
        raise DeploymentError(f"no registry recorded for {chain.url} (chain id {chain.chain_id}) in "
                              f"{_file(home)}; run `chainfl deploy --rpc {chain.url}` first")
    return Registry.at(chain, entry["address"])


def registry_address(chain, home=None) -> str | None:
    """The recorded registry address on ``chain`` (not yet verified; :meth:`Registry.at` does), or None."""
    entry = find_deployment(chain, home)
    return entry["address"] if entry else None


def record(chain, address: str, home=None) -> dict:
    """Record an existing registry at ``address`` (its code is verified first)."""
    return record_deployment(chain, Registry.at(chain, address), None, home)


def deploy_registry(chain, admin=None, home=None, force: bool = False) -> tuple[Registry, dict, bool]:
    """Deploy and record a registry unless a verified one is recorded already (or ``force``).

    Returns ``(registry, entry, created)``; ``admin`` defaults to the chain's account 0.
    """
    if not force:
        entry = find_deployment(chain, home)
        if entry is not None:
            try:
                return Registry.at(chain, entry["address"]), entry, False
            except DeploymentError:
                pass  # recorded, but the code is gone or different: deploy again
    from chainfl import config

    config.writable_dir(_file(home).parent, "deployments directory")   # before spending gas on a deploy
    admin = admin or chain.accounts[0]
    registry = Registry.deploy(chain, admin)
    try:
        entry = record_deployment(chain, registry, getattr(registry, "deployment_receipt", None), home)
    except OSError as e:
        raise DeploymentError(f"deployed a registry at {registry.address} on {chain.url} but could not record it in "
                              f"{_file(home)} ({e.strerror or e}); pass --registry {registry.address} (or set "
                              f"CHAINFL_REGISTRY) to later commands") from e
    return registry, entry, True


def _hex(value) -> str:
    text = bytes(value).hex()
    return text if text.startswith("0x") else "0x" + text


def _write_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".deployments.", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def artifact_code_sha256() -> str:
    """sha256 of the runtime code in the committed artifact (what a verified deployment has)."""
    return hashlib.sha256(bytes.fromhex(registry_artifact()["deployedBytecode"][2:])).hexdigest()
