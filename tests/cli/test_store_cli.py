"""`chainfl store put/get/verify` through click's CliRunner, against every store backend."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from chainfl.cli import main
from chainfl.storage import compute_cid, open_store
from chainfl.storage.codec import hex_digest

DATA = bytes(range(256)) * 2000          # 512,000 bytes: a dag-pb root over two leaves


@pytest.fixture
def runner():
    return CliRunner()


def test_put_get_verify_roundtrip(runner, store_url, tmp_path):
    src = tmp_path / "model.safetensors"
    src.write_bytes(DATA)
    out = tmp_path / "copy" / "model.safetensors"

    put = runner.invoke(main, ["store", "put", str(src), "--store", store_url])
    assert put.exit_code == 0, put.output
    cid = put.stdout.strip()
    got = runner.invoke(main, ["store", "get", cid, "-o", str(out), "--store", store_url])
    assert got.exit_code == 0, got.output
    verify = runner.invoke(main, ["store", "verify", cid, "--store", store_url, "--json"])
    assert verify.exit_code == 0, verify.output

    assert cid == compute_cid(DATA)
    assert out.read_bytes() == DATA
    report = json.loads(verify.stdout)
    assert report["ok"] is True and report["cid"] == cid and report["size"] == len(DATA)
    assert report["sha256"] == hex_digest(DATA)


def test_put_json_reports_cid_size_and_digest(runner, tmp_path):
    src = tmp_path / "blob"
    src.write_bytes(b"hello")
    store = (tmp_path / "store").as_uri()

    result = runner.invoke(main, ["store", "put", str(src), "--store", store, "--json"])

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"cid": compute_cid(b"hello"), "size": 5,
                                         "sha256": hex_digest(b"hello"), "store": store}


def test_store_url_comes_from_chainfl_store_env(runner, tmp_path):
    src = tmp_path / "blob"
    src.write_bytes(b"from env")
    store_dir = tmp_path / "env-store"

    result = runner.invoke(main, ["store", "put", str(src)], env={"CHAINFL_STORE": store_dir.as_uri()})

    assert result.exit_code == 0, result.output
    assert open_store(store_dir.as_uri()).get(result.stdout.strip()) == b"from env"


def test_verify_fails_on_a_tampered_block(runner, tmp_path):
    store_url = (tmp_path / "store").as_uri()
    store = open_store(store_url)
    cid = store.put(DATA)
    leaf = next(store._block_path(c) for c, _ in store.blocks(cid) if c != cid)
    raw = bytearray(leaf.read_bytes())
    raw[100] ^= 0xFF
    leaf.write_bytes(bytes(raw))
    out = tmp_path / "out"

    verify = runner.invoke(main, ["store", "verify", cid, "--store", store_url])
    get = runner.invoke(main, ["store", "get", cid, "-o", str(out), "--store", store_url])

    assert verify.exit_code == 1 and "corrupted" in verify.output and cid in verify.output
    assert get.exit_code == 1 and not out.exists()


def test_verify_with_wrong_digest_fails(runner, tmp_path):
    store_url = (tmp_path / "store").as_uri()
    cid = open_store(store_url).put(b"model")

    result = runner.invoke(main, ["store", "verify", cid, "--store", store_url,
                                  "--digest", hex_digest(b"another model")])

    assert result.exit_code == 1
    assert "chain records" in result.output


def test_missing_cid_and_bad_store_are_clean_errors(runner, tmp_path):
    store_url = (tmp_path / "store").as_uri()

    missing = runner.invoke(main, ["store", "verify", compute_cid(b"nope"), "--store", store_url])
    bad = runner.invoke(main, ["store", "verify", compute_cid(b"nope"), "--store", "s3://bucket"])

    assert missing.exit_code == 1 and "No blob" in missing.output
    assert bad.exit_code == 1 and "file:///" in bad.output
    assert "Traceback" not in missing.output + bad.output


def test_put_from_stdin_and_get_to_stdout(runner, tmp_path):
    store_url = (tmp_path / "store").as_uri()

    put = runner.invoke(main, ["store", "put", "-", "--store", store_url], input=DATA)
    assert put.exit_code == 0, put.output
    cid = put.stdout.strip()
    got = runner.invoke(main, ["store", "get", cid, "-o", "-", "--store", store_url])

    assert got.exit_code == 0, got.output
    assert got.stdout_bytes == DATA
