"""A blob put through one backend is found, verified and identical through the other."""

from __future__ import annotations

import pytest

from chainfl.storage import copy_blob, open_store
from chainfl.storage.cid import CHUNK_SIZE

from _helpers import daemon_client, pseudo_random

pytestmark = pytest.mark.backend("ipfs")

SIZE = 5 * CHUNK_SIZE + 99


@pytest.fixture
def embedded(tmp_path):
    return open_store((tmp_path / "store").as_uri())


@pytest.fixture
def daemon(daemon_url):
    return open_store(daemon_url)


def test_put_embedded_then_get_from_daemon(embedded, daemon):
    data = pseudo_random(SIZE, seed=11)
    cid = embedded.put(data)

    copied = copy_blob(embedded, daemon, cid)

    assert copied == cid
    assert daemon.get(cid, timeout=10) == data
    assert daemon.has(cid)


def test_put_daemon_then_get_into_embedded(embedded, daemon):
    data = pseudo_random(SIZE, seed=12)
    cid = daemon.put(data)

    copy_blob(daemon, embedded, cid, timeout=10)

    assert embedded.get(cid) == data


def test_daemon_holds_the_same_blocks_as_the_embedded_store(embedded, daemon, daemon_url):
    data = pseudo_random(SIZE, seed=13)
    cid = embedded.put(data)
    daemon.put(data)
    client = daemon_client(daemon_url)

    for block_cid, block in embedded.blocks(cid):
        assert client.block.get(block_cid, timeout=10) == block
