"""Compile the registry contract and load the committed artifact.

Compilation happens only in development (``scripts/compile_contracts.py``) and in the staleness
test: the npm ``solcjs`` runs through the standard-JSON interface (solcjs has no
``--combined-json``; see :func:`run_standard_json` for why not through py-solc-x), with ``evmVersion`` pinned to ``shanghai`` (the newest fork Ganache 7.9
runs) and the optimizer on. Running chainfl only *loads* the committed artifact
``chainfl/chain/artifacts/ChainflRegistry.json``; it never needs a compiler.

The artifact records the ABI, creation and runtime bytecode, the compiler version, the exact
settings and the sha256 of every source, so a stale artifact is detected without a compiler.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
from pathlib import Path

from chainfl.chain.errors import ArtifactError, CompileError
from chainfl.config import REPO_ROOT
from chainfl.errors import ToolNotFoundError
from chainfl.tools import find_tool

CONTRACT_NAME = "ChainflRegistry"
SOURCES_DIR = REPO_ROOT / "contracts"
ARTIFACT_PATH = Path(__file__).resolve().parent / "artifacts" / f"{CONTRACT_NAME}.json"

#: solc settings; part of the artifact so a rebuild uses exactly these.
SETTINGS: dict = {
    "evmVersion": "shanghai",
    "optimizer": {"enabled": True, "runs": 1000},
    "outputSelection": {
        "*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object",
                    "evm.methodIdentifiers", "devdoc", "userdoc"]},
    },
}


def read_sources(directory: Path = SOURCES_DIR) -> dict[str, str]:
    """``{file name: text}`` of every ``.sol`` file in ``contracts/``, sorted by name."""
    files = sorted(Path(directory).glob("*.sol"))
    if not files:
        raise CompileError(f"no .sol files in {directory}; run from a chainfl checkout")
    return {f.name: f.read_text() for f in files}


def sources_sha256(sources: dict[str, str]) -> str:
    """One sha256 over all sources: ``name NUL text NUL`` for each file in name order."""
    h = hashlib.sha256()
    for name in sorted(sources):
        h.update(name.encode() + b"\0" + sources[name].encode() + b"\0")
    return h.hexdigest()


def standard_input(sources: dict[str, str]) -> dict:
    """The solc standard-JSON input for these sources and :data:`SETTINGS`."""
    return {
        "language": "Solidity",
        "sources": {name: {"content": text} for name, text in sorted(sources.items())},
        "settings": SETTINGS,
    }


def compile_registry(sources: dict[str, str] | None = None, solc: Path | None = None) -> dict:
    """Compile the registry with solcjs and return the artifact dict (see module docstring).

    Raises :class:`CompileError` on compiler errors and :class:`ToolNotFoundError` without solcjs.
    """
    sources = read_sources() if sources is None else sources
    solc = Path(solc) if solc else find_tool("solcjs")
    output = run_standard_json(standard_input(sources), solc)
    version = _solc_version(solc)
    errors = [m for m in output.get("errors", []) if m.get("severity") == "error"]
    if errors:
        text = "\n".join(m.get("formattedMessage", m.get("message", "")) for m in errors)
        raise CompileError(f"the registry does not compile:\n{text}")
    contract = output["contracts"][f"{CONTRACT_NAME}.sol"][CONTRACT_NAME]
    return {
        "contractName": CONTRACT_NAME,
        "compiler": {"name": "solcjs", "version": version},
        "settings": SETTINGS,
        "sources": {name: hashlib.sha256(text.encode()).hexdigest() for name, text in sorted(sources.items())},
        "sourcesSha256": sources_sha256(sources),
        "abi": contract["abi"],
        "bytecode": "0x" + contract["evm"]["bytecode"]["object"],
        "deployedBytecode": "0x" + contract["evm"]["deployedBytecode"]["object"],
        "methodIdentifiers": contract["evm"]["methodIdentifiers"],
        "devdoc": contract.get("devdoc", {}),
        "userdoc": contract.get("userdoc", {}),
    }


def run_standard_json(input_json: dict, solc: Path) -> dict:
    """Run ``solcjs --standard-json`` with stdout going to a temporary *file*.

    Not ``solcx.compile_standard``: solcjs exits before Node flushes a pipe, so py-solc-x (which
    reads a pipe) gets the output cut at 65,536 bytes, and this contract's output is larger
    (measured here: 77,786 bytes to a file, 65,536 through a pipe).
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.run([str(solc), "--standard-json"], input=json.dumps(input_json).encode(),
                                  stdout=out, stderr=err, timeout=300)
        except (OSError, subprocess.SubprocessError) as e:
            raise CompileError(f"cannot run {solc}: {e}; reinstall with scripts/setup-tools.sh") from e
        out.seek(0)
        err.seek(0)
        text = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace").strip()
    start = text.find("{")
    try:
        if start < 0:
            raise ValueError("no JSON on stdout")
        return json.loads(text[start:])
    except ValueError as e:
        hint = ""
        if "SMT" in text[:start] or "SMT" in stderr:
            hint = " solcjs printed a line about SMT solvers: install Debian's z3 (apt-get install z3)."
        raise CompileError(f"{solc} --standard-json gave no JSON (exit {proc.returncode}: "
                           f"{stderr or text[:200]!r}).{hint}") from e


def _solc_version(solc: Path) -> str:
    try:
        out = subprocess.run([str(solc), "--version"], capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as e:
        raise ToolNotFoundError(f"cannot run {solc} --version: {e}; reinstall with scripts/setup-tools.sh") from e
    return out.stdout.strip().splitlines()[-1]


def write_artifact(artifact: dict, path: Path = ARTIFACT_PATH) -> Path:
    """Write the artifact as stable, sorted JSON (so a rebuild gives an identical file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(artifact, indent=1, sort_keys=True) + "\n")
    return path


def load_artifact(path: Path = ARTIFACT_PATH) -> dict:
    """The committed artifact. Raises :class:`ArtifactError` if it is missing or unreadable."""
    path = Path(path)
    try:
        artifact = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise ArtifactError(f"registry artifact {path} is missing; run scripts/compile_contracts.py") from e
    except (OSError, ValueError) as e:
        raise ArtifactError(f"registry artifact {path} is unreadable ({e}); run scripts/compile_contracts.py") from e
    for key in ("abi", "bytecode", "deployedBytecode", "sourcesSha256"):
        if key not in artifact:
            raise ArtifactError(f"registry artifact {path} lacks {key!r}; run scripts/compile_contracts.py")
    return artifact
