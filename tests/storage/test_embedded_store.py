"""The embedded store keeps IPFS blocks on disk and refuses damaged ones."""

from __future__ import annotations

import pytest

from chainfl.errors import BlobNotFoundError, IntegrityError
from chainfl.storage import compute_cid, open_store
from chainfl.storage.cid import CHUNK_SIZE, RAW, build_dag, parse_cid
from chainfl.storage.embedded import EmbeddedStore

from _helpers import pseudo_random

LARGE = 3 * CHUNK_SIZE + 11            # three full leaves + one short leaf + a dag-pb root


@pytest.fixture
def store(tmp_path) -> EmbeddedStore:
    return open_store((tmp_path / "store").as_uri())


def _leaf_paths(store: EmbeddedStore, cid: str):
    return [store._block_path(c) for c, _ in store.blocks(cid) if parse_cid(c).codec == RAW]


def _flip_byte(path, offset=0):
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


def test_blocks_on_disk_are_exactly_the_ipfs_blocks(store):
    data = pseudo_random(LARGE)

    cid = store.put(data)

    root, expected = build_dag(data)
    assert cid == root
    stored = {c: store._block_path(c).read_bytes() for c, _ in expected}
    assert stored == dict(expected)
    assert sorted(store.blocks(cid)) == sorted(expected)


def test_flipped_byte_in_a_leaf_fails_get_with_integrity_error(store):
    data = pseudo_random(LARGE)
    cid = store.put(data)
    leaf = _leaf_paths(store, cid)[1]

    _flip_byte(leaf, offset=1234)

    with pytest.raises(IntegrityError) as info:
        store.get(cid)
    assert info.value.cid == cid
    assert info.value.expected == leaf.name
    assert info.value.actual != leaf.name
    assert cid in str(info.value)


def test_flipped_byte_in_the_root_fails_get(store):
    cid = store.put(pseudo_random(LARGE))

    _flip_byte(store._block_path(cid), offset=10)

    with pytest.raises(IntegrityError):
        store.get(cid)


def test_flipped_byte_in_a_single_raw_block_fails_get(store):
    cid = store.put(b"a small model")

    _flip_byte(store._block_path(cid))

    with pytest.raises(IntegrityError) as info:
        store.get(cid)
    assert info.value.actual == compute_cid(b"` small model")


def test_truncated_block_fails_get(store):
    cid = store.put(pseudo_random(LARGE))
    leaf = _leaf_paths(store, cid)[0]

    leaf.write_bytes(leaf.read_bytes()[:-1])

    with pytest.raises(IntegrityError):
        store.get(cid)


def test_missing_leaf_is_blob_not_found_and_has_is_false(store):
    cid = store.put(pseudo_random(LARGE))
    leaf = _leaf_paths(store, cid)[2]

    leaf.unlink()

    assert not store.has(cid)
    with pytest.raises(BlobNotFoundError) as info:
        store.get(cid)
    assert info.value.cid == cid
    assert leaf.name in str(info.value)


def test_put_again_repairs_a_damaged_block(store):
    data = pseudo_random(LARGE)
    cid = store.put(data)
    _flip_byte(_leaf_paths(store, cid)[0])

    store.put(data)

    assert store.get(cid) == data


def test_writes_leave_no_temporary_files(store):
    store.put(pseudo_random(LARGE))

    leftovers = [p for p in store.root.rglob("*") if p.name.startswith(".tmp-")]
    assert leftovers == []


def test_interrupted_write_leaves_no_readable_blob(store, monkeypatch):
    data = pseudo_random(LARGE)
    cid = compute_cid(data)
    calls = {"n": 0}
    real_replace = __import__("os").replace

    def crash_on_root(src, dst):
        calls["n"] += 1
        if str(dst).endswith(cid):
            raise OSError("disk full (simulated crash before the root is renamed)")
        return real_replace(src, dst)

    monkeypatch.setattr("chainfl.storage.embedded.os.replace", crash_on_root)
    with pytest.raises(OSError):
        store.put(data)
    monkeypatch.undo()

    assert calls["n"] == 5                 # four leaves landed, the root did not
    assert not store.has(cid)
    with pytest.raises(BlobNotFoundError):
        store.get(cid)
    assert [p for p in store.root.rglob(".tmp-*")] == []
    assert store.put(data) == cid and store.get(cid) == data


def test_pin_records_marker(store):
    cid = store.put(b"keep")

    store.pin(cid)

    assert store.pinned() == [cid]


def test_hand_crafted_deep_tree_is_refused(store):
    from chainfl.storage.cid import DAG_PB, _encode_file_node, block_cid
    from chainfl.storage.embedded import MAX_DEPTH

    # A chain of single-link file nodes, each verified by hash, deeper than IPFS ever builds.
    child, tsize, size = parse_cid(store.put(b"x")), 1, 1
    for _ in range(MAX_DEPTH + 2):
        node = _encode_file_node([(child, tsize, size)])
        child, tsize = block_cid(node, DAG_PB), tsize + len(node)
        store._write_atomic(store._block_path(str(child)), node)

    with pytest.raises(IntegrityError, match="deeper"):
        store.get(str(child))
