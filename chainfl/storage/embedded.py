"""The embedded store: a local directory of IPFS blocks, addressed by the CIDs IPFS would give.

Layout (``root`` is the directory of a ``file://`` store URL)::

    root/blocks/<shard>/<cid>     one file per block: raw leaves and dag-pb nodes, exactly the
                                  blocks `ipfs add --cid-version 1 --raw-leaves` creates
    root/pins/<cid>               empty marker: the blob was pinned (nothing is ever collected)

``<shard>`` is the two characters before the CID's last one (flatfs ``next-to-last/2``).
Writes are atomic: each block goes to a temporary file in its shard directory, is fsynced and
then renamed into place (``os.replace``), and the directory is fsynced; the root block is written
last, so a crash leaves at worst unreferenced blocks, never a readable half-written blob.
``get`` re-hashes every block against its CID, checks every UnixFS size and reassembles the
bytes; a tampered, truncated or missing block raises a typed error naming the blob's CID.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from chainfl.errors import BlobNotFoundError, BlobTooLargeError, IntegrityError, StoreError
from chainfl.storage.cid import RAW, Cid, block_cid, build_dag, decode_file_node, parse_cid

log = logging.getLogger(__name__)

#: Deepest dag-pb tree ``get`` follows: 174**8 leaves of 256 KiB is far beyond any blob; a deeper
#: (hand-crafted) tree is refused instead of exhausting the Python stack.
MAX_DEPTH = 8


class EmbeddedStore:
    """Content-addressed blocks in a local directory (created on first write)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.url = self.root.absolute().as_uri()

    def __repr__(self) -> str:
        return f"EmbeddedStore({str(self.root)!r})"

    # --- Store protocol ---------------------------------------------------------------------
    def put(self, data: bytes) -> str:
        """Store ``data`` as IPFS blocks and return its CID (idempotent; repairs damaged blocks)."""
        root_cid, blocks = build_dag(bytes(data))
        touched: set[Path] = set()
        for cid, block in blocks:          # leaves first, root last
            path = self._block_path(cid)
            if path.exists() and _file_matches(path, cid):
                continue
            self._write_atomic(path, block)
            touched.add(path.parent)
        for directory in touched:
            _fsync_dir(directory)
        log.debug("put %s (%d bytes, %d blocks) in %s", root_cid, len(data), len(blocks), self.root)
        return root_cid

    def get(self, cid: str, timeout: float | None = None, max_bytes: int | None = None) -> bytes:
        """The verified bytes of ``cid``. ``timeout`` is accepted for interface parity (local reads).

        Raises :class:`BlobNotFoundError` if the blob (or one of its blocks) is not here,
        :class:`IntegrityError` if any block does not hash to its CID or the sizes disagree, and
        :class:`BlobTooLargeError` if it holds more than ``max_bytes`` (checked from the root
        block's declared size before anything else is read, and again while reading).
        """
        parsed = parse_cid(cid)
        name = str(parsed)
        if max_bytes is not None:
            root = self._read_block(parsed, name)
            size = len(root) if parsed.codec == RAW else self._decode(root, parsed, name).filesize
            if size > max_bytes:
                raise BlobTooLargeError(f"Blob {name} holds {size} bytes, more than the {max_bytes} allowed "
                                        f"here; refused unread.", cid=name, limit=max_bytes, size=size)
        out = bytearray()
        self._assemble(parsed, name, out, expected_size=None, depth=0, limit=max_bytes)
        return bytes(out)

    def has(self, cid: str) -> bool:
        """True if the root block and every block it links to are present (not re-hashed)."""
        pending = [parse_cid(cid)]
        while pending:
            current = pending.pop()
            path = self._block_path(str(current))
            if not path.exists():
                return False
            if current.codec != RAW:
                try:
                    node = decode_file_node(path.read_bytes())
                except ValueError:
                    return False
                pending.extend(link.cid for link in node.links)
        return True

    def pin(self, cid: str, timeout: float | None = None) -> None:
        """Mark ``cid`` as pinned. The embedded store never collects blocks; this records intent.

        ``timeout`` is accepted for interface parity. Raises :class:`BlobNotFoundError` if absent.
        """
        name = str(parse_cid(cid))
        if not self.has(name):
            raise BlobNotFoundError(
                f"Cannot pin {name}: it is not in the embedded store at {self.root} — put it first.",
                cid=name)
        marker = self.root / "pins" / name
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()

    def pinned(self) -> list[str]:
        """CIDs pinned in this store, sorted."""
        pins = self.root / "pins"
        return sorted(p.name for p in pins.iterdir()) if pins.is_dir() else []

    def blocks(self, cid: str) -> list[tuple[str, bytes]]:
        """Every block of ``cid`` (verified), root first: what a CAR export or a block push needs."""
        out: list[tuple[str, bytes]] = []
        pending = [parse_cid(cid)]
        name = str(pending[0])
        while pending:
            current = pending.pop(0)
            block = self._read_block(current, name)
            out.append((str(current), block))
            if current.codec != RAW:
                pending.extend(link.cid for link in self._decode(block, current, name).links)
        return out

    # --- internals --------------------------------------------------------------------------
    def _block_path(self, cid: str) -> Path:
        return self.root / "blocks" / cid[-3:-1] / cid

    def _read_block(self, cid: Cid, blob: str) -> bytes:
        text = str(cid)
        path = self._block_path(text)
        try:
            block = path.read_bytes()
        except FileNotFoundError:
            if text == blob:
                raise BlobNotFoundError(
                    f"No blob {blob} in the embedded store at {self.root} — put it there first, or "
                    f"fetch it from the store it was published to (--store ipfs://host:port).",
                    cid=blob) from None
            raise BlobNotFoundError(
                f"Blob {blob} is incomplete in the embedded store at {self.root}: block {text} is "
                f"missing. Put the blob again to repair it.", cid=blob) from None
        except OSError as e:
            raise StoreError(f"Cannot read block {text} of {blob} at {path}: {e}") from e
        if not cid.matches(block):
            actual = str(block_cid(block, cid.codec))
            what = "" if text == blob else f" (block {text})"
            raise IntegrityError(
                f"Blob {blob} is corrupted in the embedded store{what}: the stored bytes hash to "
                f"{actual}. It was not returned. Put the original bytes again to repair it.",
                cid=blob, expected=text, actual=actual)
        return block

    def _decode(self, block: bytes, cid: Cid, blob: str):
        try:
            return decode_file_node(block)
        except ValueError as e:
            raise IntegrityError(f"Blob {blob}: block {cid} is not a UnixFS file node ({e}).",
                                 cid=blob, expected=str(cid)) from e

    def _assemble(self, cid: Cid, blob: str, out: bytearray, expected_size: int | None,
                  depth: int, limit: int | None = None) -> None:
        if depth > MAX_DEPTH:
            raise IntegrityError(f"Blob {blob}: its block tree is deeper than {MAX_DEPTH} levels; "
                                 f"IPFS never builds such a tree for a file. Refused.", cid=blob)
        block = self._read_block(cid, blob)
        start = len(out)
        if cid.codec == RAW:
            if limit is not None and len(out) + len(block) > limit:
                raise BlobTooLargeError(f"Blob {blob} holds more than the {limit} bytes allowed here; "
                                        f"refused.", cid=blob, limit=limit)
            out += block
        else:
            node = self._decode(block, cid, blob)
            out += node.data
            for link, size in zip(node.links, node.blocksizes):
                self._assemble(link.cid, blob, out, expected_size=size, depth=depth + 1, limit=limit)
            if len(out) - start != node.filesize:
                raise IntegrityError(
                    f"Blob {blob}: node {cid} declares {node.filesize} bytes but its blocks hold "
                    f"{len(out) - start}.", cid=blob, expected=str(cid))
        if expected_size is not None and len(out) - start != expected_size:
            raise IntegrityError(
                f"Blob {blob}: block {cid} holds {len(out) - start} bytes, its parent says "
                f"{expected_size}.", cid=blob, expected=str(cid))

    def _write_atomic(self, path: Path, block: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(block)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise


def _file_matches(path: Path, cid: str) -> bool:
    try:
        return parse_cid(cid).matches(path.read_bytes())
    except OSError:
        return False


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
