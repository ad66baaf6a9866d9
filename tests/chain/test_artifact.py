"""The committed registry artifact matches the sources and runs on every target chain."""

from __future__ import annotations

import pytest

from chainfl.chain.compile import SETTINGS, compile_registry, load_artifact, read_sources, sources_sha256
from chainfl.chain.errors import ArtifactError
from chainfl.errors import ToolNotFoundError

# Opcodes newer than shanghai (cancun: TLOAD, TSTORE, MCOPY, BLOBHASH, BLOBBASEFEE); Ganache 7.9
# cannot run them.
POST_SHANGHAI = {0x5C: "TLOAD", 0x5D: "TSTORE", 0x5E: "MCOPY", 0x49: "BLOBHASH", 0x4A: "BLOBBASEFEE"}


def opcodes(code: bytes):
    """Yield (offset, opcode) skipping PUSH data; stops at the CBOR metadata's INVALID (0xfe) tail."""
    i = 0
    while i < len(code):
        op = code[i]
        yield i, op
        i += 1 + (op - 0x5F if 0x60 <= op <= 0x7F else 0)


@pytest.fixture(scope="module")
def artifact():
    return load_artifact()


def test_artifact_is_built_from_the_current_sources(artifact):
    sources = read_sources()
    assert artifact["sourcesSha256"] == sources_sha256(sources), (
        "contracts/ changed since the artifact was built: run .venv/bin/python scripts/compile_contracts.py")
    assert set(artifact["sources"]) == set(sources)
    assert artifact["settings"] == SETTINGS
    assert artifact["settings"]["evmVersion"] == "shanghai"
    assert artifact["compiler"]["version"].startswith("0.8.37")


def test_runtime_code_has_no_post_shanghai_opcodes(artifact):
    code = bytes.fromhex(artifact["deployedBytecode"][2:])
    # the metadata tail after the final INVALID is data, not code
    body = code[: code.rfind(b"\xfe")]
    found = {POST_SHANGHAI[op] for _, op in opcodes(body) if op in POST_SHANGHAI}
    assert not found, f"bytecode uses {found}; compile with evmVersion shanghai"


def test_every_external_function_has_natspec(artifact):
    functions = {sig.split("(")[0] for sig in artifact["methodIdentifiers"]}
    documented = {sig.split("(")[0] for sig in artifact["userdoc"].get("methods", {})}
    documented |= {sig.split("(")[0] for sig in artifact["devdoc"].get("methods", {})}
    assert functions - documented == set()


def test_missing_artifact_is_a_clear_error(tmp_path):
    with pytest.raises(ArtifactError, match="compile_contracts.py"):
        load_artifact(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"abi": []}')
    with pytest.raises(ArtifactError, match="bytecode"):
        load_artifact(bad)


def test_recompiling_gives_identical_bytecode(artifact):
    try:
        fresh = compile_registry()
    except ToolNotFoundError as e:
        pytest.skip(f"solcjs not installed, cannot recompile ({e}); the source-hash test above still ran")
    assert fresh["bytecode"] == artifact["bytecode"]
    assert fresh["deployedBytecode"] == artifact["deployedBytecode"]
    assert fresh["abi"] == artifact["abi"]
    assert fresh["sourcesSha256"] == artifact["sourcesSha256"]
