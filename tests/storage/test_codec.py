"""The safetensors model codec: deterministic bytes, strict decoding, nothing ever unpickled."""

from __future__ import annotations

import json
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from chainfl.errors import CodecError, IntegrityError
from chainfl.storage import open_store
from chainfl.storage.codec import (decode_model, digest, encode_model, expected_of, fetch_verified,
                                   hex_digest)

REPO = Path(__file__).resolve().parents[2]
META = {"model": {"kind": "mlp", "hidden": [4, 2]}, "seed": 7, "lr": 0.01}


def _state(seed=0):
    rng = np.random.default_rng(seed)
    return {"net.0.weight": rng.normal(size=(4, 3)).astype(np.float32),
            "net.0.bias": rng.normal(size=4).astype(np.float32),
            "net.2.weight": rng.normal(size=(1, 4)).astype(np.float32),
            "steps": np.array([12], dtype=np.int64)}


def _blob(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def _meta():
    return {"chainfl": json.dumps(META, sort_keys=True, separators=(",", ":"))}


def test_roundtrip_returns_equal_arrays_sorted_by_name_and_meta():
    state = _state()

    decoded, meta = decode_model(encode_model(state, META), expected=expected_of(state))

    assert list(decoded) == sorted(state)
    for name, array in state.items():
        np.testing.assert_array_equal(decoded[name], array)
        assert decoded[name].dtype == array.dtype
    assert meta == META


def test_same_weights_and_meta_give_same_bytes_regardless_of_insertion_order():
    state = _state()
    reordered = dict(reversed(list(state.items())))
    meta_reordered = dict(reversed(list(META.items())))

    assert encode_model(state, META) == encode_model(reordered, meta_reordered)


def test_same_bytes_across_processes():
    code = ("import sys, numpy as np; sys.path.insert(0, 'tests/storage');"
            "from test_codec import _state, META; from chainfl.storage.codec import encode_model, hex_digest;"
            "print(hex_digest(encode_model(_state(), META)))")
    here = hex_digest(encode_model(_state(), META))

    outputs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True, cwd=REPO, env={"PYTHONHASHSEED": str(seed)}).stdout.strip()
               for seed in (1, 2)}

    assert outputs == {here}


def test_different_weights_give_different_digest():
    state = _state()
    changed = dict(state, **{"net.0.bias": state["net.0.bias"] + np.float32(1e-6)})

    assert digest(encode_model(state, META)) != digest(encode_model(changed, META))


def test_meta_with_nan_cannot_be_encoded():
    with pytest.raises(CodecError, match="canonical JSON"):
        encode_model(_state(), {"lr": float("nan")})


def test_object_dtype_cannot_be_encoded():
    with pytest.raises(CodecError, match="'bad'"):
        encode_model({"bad": np.array([object()], dtype=object)}, {})


@pytest.mark.parametrize("change,message", [
    (lambda e: e.pop("net.0.bias"), "unexpected tensor"),
    (lambda e: e.update({"net.4.weight": ((2,), np.float32)}), "lacks tensor"),
    (lambda e: e.update({"net.0.weight": ((3, 4), np.float32)}), "'net.0.weight' has shape"),
    (lambda e: e.update({"net.0.bias": ((4,), np.float64)}), "'net.0.bias' has dtype"),
])
def test_expected_mismatch_names_the_tensor(change, message):
    state = _state()
    expected = expected_of(state)
    change(expected)

    with pytest.raises(CodecError, match=message):
        decode_model(encode_model(state, META), expected=expected)


def test_nan_weights_are_rejected_unless_allowed():
    state = _state()
    state["net.0.bias"][2] = np.nan
    blob = encode_model(state, META)

    with pytest.raises(CodecError, match="'net.0.bias' holds 1 NaN"):
        decode_model(blob)
    decoded, _ = decode_model(blob, allow_nonfinite=True)
    assert np.isnan(decoded["net.0.bias"][2])


class _Exploit:
    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_blob_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    _Exploit.marker = str(marker)
    blob = pickle.dumps({"net.0.weight": _Exploit()})

    with pytest.raises(CodecError):
        decode_model(blob)

    assert not marker.exists()
    pickle.loads(blob)                     # the same bytes *would* run code if unpickled
    assert marker.exists()


def test_torch_save_file_is_not_a_model_blob(tmp_path):
    import torch

    path = tmp_path / "m.pt"
    torch.save({"w": torch.zeros(2)}, path)

    with pytest.raises(CodecError):
        decode_model(path.read_bytes())


@pytest.mark.parametrize("blob,message", [
    (b"", "too short"),
    (struct.pack("<Q", 2**62) + b"{}", "header"),
    (struct.pack("<Q", 10) + b"{}", "header"),
    (struct.pack("<Q", 4) + b"\xff\xfe{}", "UTF-8"),
    (struct.pack("<Q", 3) + b"{x}", "not valid JSON"),
    (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
])
def test_malformed_headers_are_rejected(blob, message):
    with pytest.raises(CodecError, match=message):
        decode_model(blob)


def test_overlapping_offsets_are_rejected_naming_the_tensor():
    header = {"__metadata__": _meta(),
              "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
              "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}

    with pytest.raises(CodecError, match="'b'.*overlaps"):
        decode_model(_blob(header, bytes(12)))


def test_offsets_beyond_the_data_are_rejected():
    header = {"__metadata__": _meta(), "a": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}

    with pytest.raises(CodecError, match="data bytes"):
        decode_model(_blob(header, bytes(8)))


def test_shape_not_matching_byte_range_is_rejected():
    header = {"__metadata__": _meta(), "a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}

    with pytest.raises(CodecError, match="'a'.*needs 12 bytes"):
        decode_model(_blob(header, bytes(8)))


def test_unknown_dtype_is_rejected_naming_the_tensor():
    header = {"__metadata__": _meta(), "a": {"dtype": "PY_OBJECT", "shape": [1], "data_offsets": [0, 8]}}

    with pytest.raises(CodecError, match="'a'.*dtype 'PY_OBJECT'"):
        decode_model(_blob(header, bytes(8)))


def test_duplicate_tensor_names_are_rejected():
    text = ('{"__metadata__":' + json.dumps(_meta()) + ',"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
            '"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}').encode()

    with pytest.raises(CodecError, match="duplicate"):
        decode_model(struct.pack("<Q", len(text)) + text + bytes(8))


def test_extra_tensor_in_blob_is_rejected_against_the_model():
    state = _state()
    expected = expected_of(state)
    state["backdoor"] = np.ones(3, dtype=np.float32)

    with pytest.raises(CodecError, match="unexpected tensor.*'backdoor'"):
        decode_model(encode_model(state, META), expected=expected)


def test_nan_in_metadata_json_is_rejected():
    header = {"__metadata__": {"chainfl": '{"lr": NaN}'},
              "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}

    with pytest.raises(CodecError, match="meta is not valid JSON"):
        decode_model(_blob(header, bytes(4)))


def test_foreign_safetensors_without_chainfl_meta_is_rejected():
    from safetensors.numpy import save

    with pytest.raises(CodecError, match="__metadata__"):
        decode_model(save({"a": np.zeros(2, np.float32)}))


def test_fetch_verified_checks_the_digest(tmp_path):
    store = open_store((tmp_path / "s").as_uri())
    blob = encode_model(_state(), META)
    cid = store.put(blob)

    assert fetch_verified(store, cid, digest(blob)) == blob
    assert fetch_verified(store, cid, hex_digest(blob)) == blob
    with pytest.raises(IntegrityError) as info:
        fetch_verified(store, cid, digest(b"other"))
    assert info.value.actual == hex_digest(blob)
