"""The shared Store suite: every backend behind open_store(url) passes the same tests."""

from __future__ import annotations

import pytest

from chainfl.errors import BlobNotFoundError, ConfigError, InvalidCidError
from chainfl.storage import Store, compute_cid, open_store
from chainfl.storage.cid import CHUNK_SIZE

from _helpers import pseudo_random

MISSING = compute_cid(b"chainfl: a blob no test ever stores")


@pytest.fixture
def store(store_url) -> Store:
    return open_store(store_url)


def test_store_satisfies_protocol(store, store_url):
    assert isinstance(store, Store)
    assert store.url == store_url


@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE + 5])
def test_put_get_roundtrip_under_the_computed_cid(store, size):
    data = pseudo_random(size, seed=100 + size)

    cid = store.put(data)

    assert cid == compute_cid(data)
    assert store.get(cid, timeout=10) == data
    assert store.has(cid)


def test_put_is_idempotent(store):
    data = pseudo_random(CHUNK_SIZE * 2 + 3, seed=1)

    first = store.put(data)
    second = store.put(data)

    assert first == second
    assert store.get(first, timeout=10) == data


def test_pin_keeps_a_stored_blob(store):
    cid = store.put(b"pin me")

    store.pin(cid)

    assert store.has(cid)


def test_missing_blob_raises_blob_not_found_naming_the_cid(store):
    with pytest.raises(BlobNotFoundError) as info:
        store.get(MISSING, timeout=1)

    assert info.value.cid == MISSING
    assert MISSING in str(info.value)
    assert not store.has(MISSING)


def test_pin_of_missing_blob_raises_blob_not_found(store):
    with pytest.raises(BlobNotFoundError):
        store.pin(MISSING, timeout=1)


def test_invalid_cid_is_a_typed_error(store):
    with pytest.raises(InvalidCidError):
        store.get("not-a-cid", timeout=1)


def test_base58_spelling_of_a_cid_finds_the_same_blob(store):
    cid = store.put(b"")          # the empty raw block, spelled in base58btc by js-ipfs

    assert store.get("zb2rhmy65F3REf8SZp7De11gxtECBGgUKaLdiDj7MCGCHxbDW", timeout=10) == b""
    assert cid == "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"


@pytest.mark.parametrize("url", ["s3://bucket", "ftp://x", "/plain/path", "file://relative/dir",
                                 "ipfs://host:notaport", "ipfs://127.0.0.1:5002/some/path"])
def test_bad_store_urls_are_config_errors(url):
    with pytest.raises(ConfigError) as info:
        open_store(url)

    assert "file://" in str(info.value) or "ipfs://" in str(info.value)


def test_default_store_is_embedded_under_chainfl_home(chainfl_home):
    store = open_store()

    cid = store.put(b"default")

    assert store.url == (chainfl_home / "store").as_uri()
    assert (chainfl_home / "store" / "blocks").is_dir()
    assert store.get(cid) == b"default"


def test_concurrent_puts_of_the_same_blob_are_safe(store):
    from concurrent.futures import ThreadPoolExecutor

    data = pseudo_random(2 * CHUNK_SIZE + 1, seed=3)

    with ThreadPoolExecutor(max_workers=4) as pool:
        cids = list(pool.map(lambda _: store.put(data), range(4)))

    assert set(cids) == {compute_cid(data)}
    assert store.get(cids[0], timeout=10) == data


@pytest.mark.parametrize("size", [100, CHUNK_SIZE, 3 * CHUNK_SIZE + 5])
def test_max_bytes_refuses_a_larger_blob_and_passes_one_at_the_limit(store, size):
    from chainfl.errors import BlobTooLargeError

    data = pseudo_random(size, seed=7 + size)
    cid = store.put(data)

    assert store.get(cid, timeout=10, max_bytes=size) == data
    with pytest.raises(BlobTooLargeError) as info:
        store.get(cid, timeout=10, max_bytes=size - 1)
    assert info.value.cid == cid and info.value.limit == size - 1
    assert str(size - 1) in str(info.value)
