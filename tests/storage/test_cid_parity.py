"""compute_cid (and the embedded store) against a real IPFS daemon's `add --cid-version 1 --raw-leaves`."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chainfl.storage import compute_cid, open_store
from chainfl.storage.cid import CHUNK_SIZE, MAX_LINKS

from _helpers import daemon_add, daemon_client, pseudo_random

# ipfshttpclient 0.7 passes urllib3's removed `strict` argument (chainfl.storage.ipfs silences it too).
pytestmark = pytest.mark.filterwarnings("ignore:The 'strict' parameter:FutureWarning")

SIZES = [0, 1, 2, 1000, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 2 * CHUNK_SIZE,
         3 * CHUNK_SIZE + 17, 5 * 2**20, 5 * 2**20 + 7]


@pytest.fixture(scope="module")
def client(daemon_url):
    c = daemon_client(daemon_url)
    yield c
    c.close()


@pytest.mark.backend("ipfs")
@pytest.mark.parametrize("size", SIZES)
def test_compute_cid_equals_daemon_cid(client, tmp_path, size):
    data = pseudo_random(size, seed=size)

    daemon_cid = daemon_add(client, data)
    embedded_cid = open_store((tmp_path / "s").as_uri()).put(data)

    assert compute_cid(data) == daemon_cid
    assert embedded_cid == daemon_cid


@pytest.mark.backend("ipfs")
@pytest.mark.slow
def test_second_tree_level_equals_daemon_cid(client):
    # 174 full chunks + 1 byte: the root links two internal nodes (~44 MiB, ~3 s on the daemon).
    data = pseudo_random(MAX_LINKS * CHUNK_SIZE + 1, seed=174)

    assert compute_cid(data) == daemon_add(client, data)


@pytest.mark.backend("ipfs")
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(min_value=0, max_value=3 * 2**20))
def test_any_size_up_to_3_mib_equals_daemon_cid(client, size):
    data = pseudo_random(size, seed=7)

    assert compute_cid(data) == daemon_add(client, data)
