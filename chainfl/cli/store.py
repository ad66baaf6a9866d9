"""``chainfl store``: put, get and verify blobs in the content-addressed store."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import click

from chainfl.cli._common import echo_json, json_option, resolve_store, store_option
from chainfl.errors import ConfigError


def _open(store: str | None):
    from chainfl.storage import open_store

    return open_store(resolve_store(store))


def _summary(cid: str, data: bytes, store) -> dict:
    from chainfl.storage.codec import hex_digest

    return {"cid": cid, "size": len(data), "sha256": hex_digest(data), "store": store.url}


@click.group("store")
def store_group() -> None:
    """Content-addressed blob store (embedded file:// or an IPFS daemon's ipfs://host:port)."""


@store_group.command("put")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@store_option
@json_option
def put_cmd(file: str, store: str | None, as_json: bool) -> None:
    """Store FILE ('-' for stdin) and print its CID (the one `ipfs add --cid-version 1 --raw-leaves` gives)."""
    data = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
    backend = _open(store)
    cid = backend.put(data)
    backend.pin(cid)
    if as_json:
        echo_json(_summary(cid, data, backend))
    else:
        click.echo(cid)


@store_group.command("get")
@click.argument("cid")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, allow_dash=True),
              help="File to write ('-' for stdout). Written only after the bytes are verified.")
@click.option("--timeout", type=float, default=30.0, show_default=True,
              help="Seconds to wait for an IPFS daemon before giving up.")
@store_option
@json_option
def get_cmd(cid: str, output: str, timeout: float, store: str | None, as_json: bool) -> None:
    """Fetch CID, verify it, and write it to OUTPUT (atomically)."""
    backend = _open(store)
    data = backend.get(cid, timeout=timeout)
    if output == "-":
        if as_json:
            raise ConfigError("--json and -o - both use stdout; write the blob to a file instead.")
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    _write_atomic(Path(output), data)
    if as_json:
        echo_json(dict(_summary(cid, data, backend), output=str(output)))
    else:
        click.echo(f"{cid} -> {output} ({len(data)} bytes)", err=True)


@store_group.command("verify")
@click.argument("cid")
@click.option("--digest", "expected_digest", default=None,
              help="Also require this sha256 (0x… hex, e.g. the digest recorded on chain).")
@click.option("--timeout", type=float, default=30.0, show_default=True,
              help="Seconds to wait for an IPFS daemon before giving up.")
@store_option
@json_option
def verify_cmd(cid: str, expected_digest: str | None, timeout: float, store: str | None,
               as_json: bool) -> None:
    """Fetch CID and check every block against it (and the bytes against --digest); exit 1 if not."""
    from chainfl.storage.codec import fetch_verified

    backend = _open(store)
    if expected_digest:
        data = fetch_verified(backend, cid, expected_digest, timeout=timeout)
    else:
        data = backend.get(cid, timeout=timeout)
    summary = dict(_summary(cid, data, backend), ok=True)
    if as_json:
        echo_json(summary)
    else:
        click.echo(f"ok {cid} {summary['size']} bytes sha256 {summary['sha256']}")


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


commands = [store_group]
