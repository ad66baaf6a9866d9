"""Helpers shared by the storage tests (not a test module)."""

from __future__ import annotations

import hashlib
import io
from urllib.parse import urlsplit


def pseudo_random(size: int, seed: int = 0) -> bytes:
    """Deterministic incompressible bytes (sha256 counter stream)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def daemon_client(ipfs_url: str):
    """A raw ipfshttpclient client for the daemon: an independent path to what the daemon stores."""
    from chainfl.storage.ipfs import _ipfshttpclient

    ipfshttpclient = _ipfshttpclient()
    parts = urlsplit(ipfs_url)
    return ipfshttpclient.Client(f"/ip4/{parts.hostname}/tcp/{parts.port}/http")


def daemon_add(client, data: bytes) -> str:
    """CID the daemon itself computes for `add --cid-version 1 --raw-leaves`, as base32 text."""
    from chainfl.storage.cid import normalize_cid

    response = client.add(io.BytesIO(data), cid_version=1, raw_leaves=True, pin=True)
    return normalize_cid(response["Hash"])        # js-ipfs prints CIDv1 hashes in base58btc
