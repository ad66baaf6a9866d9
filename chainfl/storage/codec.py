"""The model codec: weights + their config as deterministic safetensors bytes, never pickle.

A model blob is a safetensors file (https://github.com/huggingface/safetensors): an 8-byte
little-endian header length, a JSON header naming every tensor's dtype, shape and byte range,
then the raw little-endian tensor data. chainfl puts the model's config ("meta") in the header's
``__metadata__`` string map under the single key ``"chainfl"``, as canonical JSON (sorted keys,
``,``/``:`` separators, ASCII, no NaN/Infinity). safetensors orders tensors by dtype alignment,
then name, and one metadata key leaves no map-ordering freedom, so the same weights and meta give
the same bytes — and the same :func:`digest` — in every process.

:func:`decode_model` checks the header itself before handing the bytes to safetensors' own
parser (header size, JSON, dtypes, shapes, byte ranges that tile the data exactly), then checks
the tensors against the ``expected`` model, and by default rejects NaN/Inf weights. Nothing is
ever unpickled; every problem is a :class:`CodecError` naming the tensor and the mismatch.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Mapping

import numpy as np

from chainfl.errors import CodecError, IntegrityError

META_KEY = "chainfl"                 # the __metadata__ key holding the canonical JSON meta
MAX_HEADER_BYTES = 16 * 2**20        # far above any chainfl model's header; caps a hostile length

#: safetensors dtype code -> numpy dtype (the dtypes numpy can hold)
DTYPES = {
    "BOOL": np.dtype(np.bool_), "U8": np.dtype(np.uint8), "I8": np.dtype(np.int8),
    "U16": np.dtype("<u2"), "I16": np.dtype("<i2"), "F16": np.dtype("<f2"),
    "U32": np.dtype("<u4"), "I32": np.dtype("<i4"), "F32": np.dtype("<f4"),
    "U64": np.dtype("<u8"), "I64": np.dtype("<i8"), "F64": np.dtype("<f8"),
}
_CODES = {dtype: code for code, dtype in DTYPES.items()}


def canonical_json(obj) -> str:
    """Canonical JSON text: sorted keys, no whitespace, ASCII only, no NaN/Infinity."""
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                          allow_nan=False, default=_json_default)
    except (TypeError, ValueError) as e:
        raise CodecError(f"Model meta cannot be stored as canonical JSON: {e}. Use str/int/float "
                         f"(finite)/bool/None, lists and dicts with string keys.") from e


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def encode_model(state: Mapping[str, np.ndarray], meta: Mapping | None = None) -> bytes:
    """Serialise ``state`` (name -> array) and ``meta`` (JSON-able dict) to safetensors bytes.

    Deterministic: equal names, dtypes, shapes, values and meta give identical bytes. Tuples in
    ``meta`` come back as lists.
    """
    from safetensors.numpy import save

    if not isinstance(state, Mapping) or not state:
        raise CodecError("A model state must be a non-empty mapping of tensor name -> array.")
    tensors: dict[str, np.ndarray] = {}
    for name in sorted(state):
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise CodecError(f"Invalid tensor name {name!r}: use a non-empty string other than __metadata__.")
        array = np.asarray(state[name])
        dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
        if dtype not in _CODES:
            raise CodecError(f"Tensor {name!r} has dtype {array.dtype}, which safetensors/numpy "
                             f"cannot store; use one of {', '.join(sorted(str(d) for d in _CODES))}.")
        tensors[name] = np.ascontiguousarray(array, dtype=dtype)
    meta_text = canonical_json(dict(meta or {}))
    return bytes(save(tensors, metadata={META_KEY: meta_text}))


def decode_model(blob: bytes, expected: Mapping[str, tuple] | None = None, *,
                 allow_nonfinite: bool = False) -> tuple[dict[str, np.ndarray], dict]:
    """Parse a model blob into ``(state, meta)``; ``state`` is ordered by tensor name.

    ``expected`` maps each tensor name to ``(shape, dtype)``; any missing or extra tensor, or a
    different shape or dtype, raises :class:`CodecError`. Float tensors holding NaN or Inf are
    rejected unless ``allow_nonfinite``.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load

    blob = bytes(blob)
    header, meta = _check_layout(blob)
    try:
        loaded = load(blob)
    except SafetensorError as e:
        raise CodecError(f"Not a valid safetensors model blob: {e}.") from e
    if set(loaded) != set(header):   # cannot happen if both parsers agree; never trust silently
        raise CodecError(f"safetensors read tensors {sorted(loaded)}, the header names {sorted(header)}.")
    state = {name: loaded[name] for name in sorted(loaded)}
    if expected is not None:
        check_state(state, expected)
    if not allow_nonfinite:
        for name, array in state.items():
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                bad = int(array.size - np.isfinite(array).sum())
                raise CodecError(f"Tensor {name!r} holds {bad} NaN/Inf value(s); such a model is "
                                 f"rejected (pass allow_nonfinite=True to inspect it anyway).")
    return state, meta


def check_state(state: Mapping[str, np.ndarray], expected: Mapping[str, tuple]) -> None:
    """Raise :class:`CodecError` unless ``state`` has exactly ``expected``'s names, shapes, dtypes."""
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing:
        raise CodecError(f"Model blob lacks tensor(s) {', '.join(map(repr, missing))} the model needs.")
    if extra:
        raise CodecError(f"Model blob has unexpected tensor(s) {', '.join(map(repr, extra))}; "
                         f"the model has {', '.join(map(repr, sorted(expected)))}.")
    for name in sorted(expected):
        shape, dtype = expected[name]
        array = state[name]
        if tuple(array.shape) != tuple(int(s) for s in shape):
            raise CodecError(f"Tensor {name!r} has shape {tuple(array.shape)}, the model expects "
                             f"{tuple(shape)}.")
        if array.dtype != np.dtype(dtype):
            raise CodecError(f"Tensor {name!r} has dtype {array.dtype}, the model expects "
                             f"{np.dtype(dtype)}.")


def expected_of(state: Mapping[str, np.ndarray]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """The ``expected`` mapping (name -> (shape, dtype)) describing ``state``."""
    return {name: (tuple(np.shape(a)), np.asarray(a).dtype) for name, a in state.items()}


def digest(blob: bytes) -> bytes:
    """sha256 of the blob: the 32 bytes recorded on chain."""
    return hashlib.sha256(blob).digest()


def hex_digest(blob: bytes) -> str:
    """``0x``-prefixed hex of :func:`digest`."""
    return "0x" + digest(blob).hex()


def _digest_bytes(value: bytes | str) -> bytes:
    if isinstance(value, str):
        text = value[2:] if value.lower().startswith("0x") else value
        try:
            value = bytes.fromhex(text)
        except ValueError as e:
            raise CodecError(f"Digest {value!r} is not hex.") from e
    if len(value) != 32:
        raise CodecError(f"A digest is 32 bytes (sha256); got {len(value)}.")
    return bytes(value)


def fetch_verified(store, cid: str, expected_digest: bytes | str, timeout: float | None = 30.0,
                   max_bytes: int | None = None) -> bytes:
    """Get ``cid`` from ``store`` and return it only if its sha256 equals ``expected_digest``
    (and it holds at most ``max_bytes``: BlobTooLargeError otherwise, before it is read whole).

    The store has already checked the bytes against the CID; this checks them against the
    digest recorded on chain (bytes32 or ``0x`` hex) and raises :class:`IntegrityError` otherwise.
    """
    want = _digest_bytes(expected_digest)
    data = store.get(cid, timeout=timeout) if max_bytes is None else \
        store.get(cid, timeout=timeout, max_bytes=max_bytes)
    got = digest(data)
    if got != want:
        raise IntegrityError(
            f"Blob {cid} has sha256 0x{got.hex()}, but the chain records 0x{want.hex()}: the CID "
            f"and the digest on chain name different bytes. Not used.",
            cid=cid, expected="0x" + want.hex(), actual="0x" + got.hex())
    return data


# --- header validation (pure JSON; no code runs, nothing is allocated from hostile sizes) ------
def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"duplicate key(s) {dupes}")
    return dict(pairs)


def _strict_json(text: str, what: str):
    try:
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)
    except ValueError as e:     # JSONDecodeError is a ValueError
        raise CodecError(f"Model blob {what} is not valid JSON: {e}.") from e


def _check_layout(blob: bytes) -> tuple[dict[str, dict], dict]:
    if len(blob) < 8:
        raise CodecError(f"Model blob is {len(blob)} bytes: too short for a safetensors header.")
    (size,) = struct.unpack("<Q", blob[:8])
    if size > MAX_HEADER_BYTES or size > len(blob) - 8:
        raise CodecError(f"Model blob declares a {size}-byte header but has {len(blob) - 8} bytes "
                         f"after the length field (limit {MAX_HEADER_BYTES}): not a safetensors blob.")
    try:
        text = blob[8:8 + size].decode("utf-8")
    except UnicodeDecodeError as e:
        raise CodecError(f"Model blob header is not UTF-8: {e}.") from e
    header = _strict_json(text, "header")
    if not isinstance(header, dict):
        raise CodecError("Model blob header is not a JSON object.")
    meta_map = header.pop("__metadata__", None)
    if not isinstance(meta_map, dict) or not isinstance(meta_map.get(META_KEY), str):
        raise CodecError(f"Model blob has no __metadata__[{META_KEY!r}] string: it was not written by "
                         f"chainfl.storage.codec.encode_model.")
    meta = _strict_json(meta_map[META_KEY], "meta")
    if not isinstance(meta, dict):
        raise CodecError("Model blob meta is not a JSON object.")
    data_len = len(blob) - 8 - size
    spans = []
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise CodecError(f"Tensor {name!r}: header entry must have exactly dtype, shape, data_offsets.")
        code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if code not in DTYPES:
            raise CodecError(f"Tensor {name!r}: dtype {code!r} is not one of {', '.join(DTYPES)}.")
        if not isinstance(shape, list) or not all(type(s) is int and s >= 0 for s in shape):
            raise CodecError(f"Tensor {name!r}: shape {shape!r} is not a list of non-negative integers.")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(type(o) is int for o in offsets) or not 0 <= offsets[0] <= offsets[1]):
            raise CodecError(f"Tensor {name!r}: data_offsets {offsets!r} is not [begin, end].")
        need = math.prod(shape) * DTYPES[code].itemsize
        if offsets[1] - offsets[0] != need:
            raise CodecError(f"Tensor {name!r}: {code}{shape} needs {need} bytes, its data_offsets "
                             f"span {offsets[1] - offsets[0]}.")
        spans.append((offsets[0], offsets[1], name))
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            kind = "overlaps the previous tensor" if begin < position else "leaves a gap before it"
            raise CodecError(f"Tensor {name!r}: data_offsets [{begin}, {end}] {kind} (expected to "
                             f"start at {position}).")
        position = end
    if position != data_len:
        raise CodecError(f"Model blob has {data_len} data bytes but its tensors cover {position}.")
    return header, meta
