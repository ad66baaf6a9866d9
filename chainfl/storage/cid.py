"""CIDv1 computation, identical to ``ipfs add --cid-version 1 --raw-leaves`` (Kubo and js-ipfs).

Pure functions, no I/O. Bytes are cut into 256 KiB chunks (the default fixed-size chunker); each
chunk is a *raw* block (codec ``raw``, 0x55). One chunk is its own root (``bafk…``). More chunks
are linked by a balanced tree of UnixFS ``File`` nodes in dag-pb (codec 0x70, ``bafy…``), at most
174 links per node, built bottom-up in groups of 174 exactly as js-ipfs' balanced builder does.
Every block is addressed by sha2-256; CIDs print as base32 (multibase prefix ``b``).

:func:`build_dag` returns every block of that tree (so a store can keep them as IPFS does and push
them to a real node later); :func:`decode_file_node` reads a dag-pb file node back (links and
UnixFS sizes) so a store can reassemble and verify a blob block by block.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from chainfl.errors import InvalidCidError

CHUNK_SIZE = 262_144          # bytes per leaf (ipfs add default: size-262144)
MAX_LINKS = 174               # links per dag-pb node (balanced layout default)

RAW = 0x55                    # multicodec: raw bytes
DAG_PB = 0x70                 # multicodec: MerkleDAG protobuf
SHA2_256 = 0x12               # multihash: sha2-256
UNIXFS_FILE = 2               # UnixFS Data.DataType.File

_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


# --- varints and protobuf ------------------------------------------------------------------
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _field_bytes(field: int, data: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _field_varint(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _read_fields(buf: bytes):
    """Yield ``(field, wire_type, value)`` of a protobuf message (varint and length-delimited only)."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 2:
            length, pos = _read_varint(buf, pos)
            if pos + length > len(buf):
                raise ValueError("length-delimited field runs past the end")
            value, pos = buf[pos:pos + length], pos + length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, wire, value


# --- CIDs ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cid:
    """A parsed CIDv1 with a sha2-256 multihash."""

    codec: int        # RAW or DAG_PB
    digest: bytes     # 32-byte sha2-256 of the block

    @property
    def bytes(self) -> bytes:
        return _varint(1) + _varint(self.codec) + _varint(SHA2_256) + _varint(32) + self.digest

    def __str__(self) -> str:
        return "b" + base64.b32encode(self.bytes).decode().lower().rstrip("=")

    def matches(self, block: bytes) -> bool:
        return hashlib.sha256(block).digest() == self.digest


def block_cid(block: bytes, codec: int) -> Cid:
    return Cid(codec, hashlib.sha256(block).digest())


def _b58decode(text: str) -> bytes:
    n = 0
    for ch in text:
        idx = _B58_ALPHABET.find(ch)
        if idx < 0:
            raise ValueError(f"invalid base58 character {ch!r}")
        n = n * 58 + idx
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\x00" * (len(text) - len(text.lstrip("1"))) + body


def cid_from_bytes(raw: bytes, text: str = "") -> Cid:
    shown = text or raw.hex()
    try:
        version, pos = _read_varint(raw, 0)
        codec, pos = _read_varint(raw, pos)
        hash_code, pos = _read_varint(raw, pos)
        length, pos = _read_varint(raw, pos)
    except ValueError as e:
        raise InvalidCidError(f"{shown!r} is not a CID: {e}", cid=shown) from e
    if version != 1:
        raise InvalidCidError(f"{shown!r}: only CIDv1 is supported (got version {version}); "
                              f"add with --cid-version 1 --raw-leaves", cid=shown)
    if codec not in (RAW, DAG_PB):
        raise InvalidCidError(f"{shown!r}: codec 0x{codec:x} is neither raw (0x55) nor dag-pb (0x70)",
                              cid=shown)
    if hash_code != SHA2_256 or length != 32 or len(raw) - pos != 32:
        raise InvalidCidError(f"{shown!r}: only sha2-256 multihashes are supported", cid=shown)
    return Cid(codec, raw[pos:])


def parse_cid(text: str) -> Cid:
    """Parse a CIDv1 string (base32 ``b…`` or base58btc ``z…``); raise :class:`InvalidCidError`."""
    if not isinstance(text, str) or len(text) < 2:
        raise InvalidCidError(f"{text!r} is not a CID (expected a CIDv1 such as bafk…/bafy…)", cid=str(text))
    prefix, body = text[0], text[1:]
    try:
        if prefix == "b":
            raw = base64.b32decode(body.upper() + "=" * (-len(body) % 8))
        elif prefix == "z":
            raw = _b58decode(body)
        elif text.startswith("Qm"):
            raise InvalidCidError(f"{text!r} is a CIDv0; chainfl uses CIDv1 only "
                                  f"(ipfs add --cid-version 1 --raw-leaves)", cid=text)
        else:
            raise ValueError(f"unsupported multibase prefix {prefix!r} (use base32 'b…')")
    except (ValueError, TypeError) as e:
        raise InvalidCidError(f"{text!r} is not a CID: {e}", cid=text) from e
    return cid_from_bytes(raw, text)


def normalize_cid(text: str) -> str:
    """The canonical (base32) string of a CIDv1 given in any supported multibase."""
    return str(parse_cid(text))


# --- dag-pb / UnixFS -----------------------------------------------------------------------
@dataclass(frozen=True)
class Link:
    cid: Cid
    tsize: int        # cumulative size of the linked subtree's blocks


@dataclass(frozen=True)
class FileNode:
    """A decoded dag-pb UnixFS file node."""

    links: tuple[Link, ...]
    filesize: int
    blocksizes: tuple[int, ...]
    data: bytes


def _encode_file_node(children: list[tuple[Cid, int, int]]) -> bytes:
    """dag-pb bytes of a UnixFS File node over ``(cid, tsize, file_bytes)`` children."""
    unixfs = _field_varint(1, UNIXFS_FILE)
    unixfs += _field_varint(3, sum(size for _, _, size in children))
    for _, _, size in children:
        unixfs += _field_varint(4, size)
    node = b""
    for cid, tsize, _ in children:       # PBNode.Links (field 2) are written before Data (field 1)
        link = _field_bytes(1, cid.bytes) + _field_bytes(2, b"") + _field_varint(3, tsize)
        node += _field_bytes(2, link)
    return node + _field_bytes(1, unixfs)


def decode_file_node(block: bytes) -> FileNode:
    """Decode a dag-pb UnixFS File node; raise ValueError if it is anything else."""
    links: list[Link] = []
    unixfs = None
    for field, wire, value in _read_fields(block):
        if field == 2 and wire == 2:
            hash_ = tsize = None
            for lf, lw, lv in _read_fields(value):
                if lf == 1 and lw == 2:
                    hash_ = cid_from_bytes(lv)
                elif lf == 3 and lw == 0:
                    tsize = lv
            if hash_ is None:
                raise ValueError("dag-pb link without a hash")
            links.append(Link(hash_, tsize or 0))
        elif field == 1 and wire == 2:
            unixfs = value
        else:
            raise ValueError(f"unexpected dag-pb field {field}")
    if unixfs is None:
        raise ValueError("dag-pb node without UnixFS data")
    kind, filesize, data, blocksizes = None, None, b"", []
    for field, wire, value in _read_fields(unixfs):
        if field == 1 and wire == 0:
            kind = value
        elif field == 2 and wire == 2:
            data = value
        elif field == 3 and wire == 0:
            filesize = value
        elif field == 4 and wire == 0:
            blocksizes.append(value)
    if kind not in (UNIXFS_FILE, 0):   # 0 = Raw, written by some old importers
        raise ValueError(f"UnixFS node of type {kind} is not a file")
    if len(blocksizes) != len(links):
        raise ValueError(f"{len(links)} links but {len(blocksizes)} block sizes")
    return FileNode(tuple(links), filesize if filesize is not None else len(data) + sum(blocksizes),
                    tuple(blocksizes), data)


# --- the importer ----------------------------------------------------------------------------
def build_dag(data: bytes) -> tuple[str, list[tuple[str, bytes]]]:
    """All blocks of ``data`` as IPFS would store them: ``(root_cid, [(cid, block), ...])``.

    Leaves come first in file order, then each tree level; the root block is last.
    """
    data = bytes(data)
    chunks = [data[i:i + CHUNK_SIZE] for i in range(0, len(data), CHUNK_SIZE)] or [b""]
    blocks: list[tuple[str, bytes]] = []
    # level entries: (cid, tsize = block + subtree bytes, file bytes under it)
    level: list[tuple[Cid, int, int]] = []
    for chunk in chunks:
        cid = block_cid(chunk, RAW)
        blocks.append((str(cid), chunk))
        level.append((cid, len(chunk), len(chunk)))
    if len(level) == 1:
        return str(level[0][0]), blocks
    while len(level) > 1:
        parents = []
        for i in range(0, len(level), MAX_LINKS):
            group = level[i:i + MAX_LINKS]
            node = _encode_file_node(group)
            cid = block_cid(node, DAG_PB)
            blocks.append((str(cid), node))
            parents.append((cid, len(node) + sum(t for _, t, _ in group), sum(s for _, _, s in group)))
        level = parents
    return str(level[0][0]), blocks


def compute_cid(data: bytes) -> str:
    """The CIDv1 ``ipfs add --cid-version 1 --raw-leaves`` prints for ``data``, without a store."""
    data = bytes(data)
    if len(data) <= CHUNK_SIZE:
        return str(block_cid(data, RAW))
    return build_dag(data)[0]
