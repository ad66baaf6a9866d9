"""Thin chain reads/writes shared by feature extraction and the simulator.

HTTP providers get JSON-RPC batch requests (at most :data:`BATCH` calls each) with raw hex results
parsed here (web3's per-field result formatters cost more than the node itself on big blocks);
in-process providers (eth-tester) get plain web3 calls, one per block or address. Receipts are read
only for the transactions that need one (contract creations), never for every transaction.
Nothing here reads state at a past block: code is read at ``latest``, so an ordinary (non-archive)
node serves every call.
"""

from __future__ import annotations

from dataclasses import dataclass

from chainfl.errors import ChainError


@dataclass(frozen=True)
class RawTx:
    hash: bytes
    sender: str                # lower-case hex
    to: str | None             # None: contract creation
    value: int
    nonce: int


@dataclass(frozen=True)
class RawBlock:
    number: int
    timestamp: int
    txs: tuple[RawTx, ...]


def _hex_bytes(value) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    text = str(value)
    return bytes.fromhex(text[2:] if text.startswith("0x") else text)


def _addr(value) -> str | None:
    if value is None or value == "" or value == b"":
        return None
    if isinstance(value, (bytes, bytearray)):
        return "0x" + bytes(value).hex()
    return str(value).lower()


def _int(value) -> int:
    return int(value, 16) if isinstance(value, str) else int(value)


def _parse_block(block) -> RawBlock:
    txs = tuple(RawTx(_hex_bytes(t["hash"]), _addr(t["from"]), _addr(t.get("to")), _int(t["value"]),
                      _int(t["nonce"])) for t in block["transactions"])
    return RawBlock(_int(block["number"]), _int(block["timestamp"]), txs)


def batched(w3) -> bool:
    return hasattr(w3.provider, "make_batch_request")


def _batch(w3, calls: list[tuple[str, list]]) -> list:
    responses = w3.provider.make_batch_request(calls)
    if isinstance(responses, dict):          # the node refused the whole batch
        raise ChainError(f"the node refused a batch of {len(calls)} {calls[0][0]} requests: "
                         f"{responses.get('error')}")
    out = []
    for (method, params), response in zip(calls, responses):
        if "error" in response or response.get("result") is None and method == "eth_getBlockByNumber":
            raise ChainError(f"{method}{params} failed: {response.get('error', 'no such block')}")
        out.append(response["result"])
    return out


#: Most calls per JSON-RPC batch request (public providers commonly cap batches at 100-1,000).
BATCH = 500


def _batch_chunked(w3, calls: list[tuple[str, list]]) -> list:
    out = []
    for start in range(0, len(calls), BATCH):
        out.extend(_batch(w3, calls[start:start + BATCH]))
    return out


def fetch_blocks(w3, numbers: list[int]) -> list[RawBlock]:
    """Blocks with full transactions, in the order of ``numbers``."""
    try:
        if batched(w3):
            results = _batch(w3, [("eth_getBlockByNumber", [hex(n), True]) for n in numbers])
        else:
            results = [w3.eth.get_block(n, full_transactions=True) for n in numbers]
    except ChainError:
        raise
    except Exception as e:  # provider errors differ per backend
        raise ChainError(f"reading blocks {numbers[0]}..{numbers[-1]} failed: {e}") from e
    return [_parse_block(b) for b in results]


def codes(w3, addresses: list[str]) -> list[bytes]:
    """Each address's code at the **latest** block (the only state a non-archive node is sure to
    have: an ``eth_getCode`` at an older block fails there with e.g. ``BlockOutOfRangeError``)."""
    from web3 import Web3

    try:
        if batched(w3):
            found = _batch_chunked(w3, [("eth_getCode", [a, "latest"]) for a in addresses])
        else:
            found = [w3.eth.get_code(Web3.to_checksum_address(a), "latest") for a in addresses]
    except ChainError:
        raise
    except Exception as e:
        raise ChainError(f"eth_getCode at the latest block failed: {e}") from e
    return [_hex_bytes(c) for c in found]


@dataclass(frozen=True)
class RawReceipt:
    tx_hash: bytes
    status: int                    # 1 success, 0 failure
    contract_address: str | None   # lower-case hex; set for contract creations


def receipts(w3, tx_hashes: list[bytes]) -> list[RawReceipt]:
    """Receipts of ``tx_hashes`` (block data: every full node keeps them, archive or not)."""
    try:
        if batched(w3):
            found = _batch_chunked(w3, [("eth_getTransactionReceipt", ["0x" + h.hex()]) for h in tx_hashes])
        else:
            found = [w3.eth.get_transaction_receipt(h) for h in tx_hashes]
    except ChainError:
        raise
    except Exception as e:
        raise ChainError(f"eth_getTransactionReceipt failed: {e}") from e
    out = []
    for h, r in zip(tx_hashes, found):
        if r is None:
            raise ChainError(f"the node has no receipt for transaction 0x{h.hex()}, which is in a block it "
                             f"served; use a node that keeps the receipts of the blocks you read")
        status = r.get("status")
        out.append(RawReceipt(h, 1 if status is None else _int(status), _addr(r.get("contractAddress"))))
    return out


def tx_counts(w3, addresses: list[str]) -> list[int]:
    """Nonces (sent-transaction counts) at the latest block."""
    from web3 import Web3

    if batched(w3):
        return [_int(c) for c in _batch(w3, [("eth_getTransactionCount", [a, "latest"]) for a in addresses])]
    return [int(w3.eth.get_transaction_count(Web3.to_checksum_address(a))) for a in addresses]


def send_raw(w3, raws: list[bytes], chunk: int = 500) -> None:
    """Send signed transactions (batched on HTTP providers)."""
    if batched(w3):
        for start in range(0, len(raws), chunk):
            part = raws[start:start + chunk]
            try:
                _batch(w3, [("eth_sendRawTransaction", ["0x" + raw.hex()]) for raw in part])
            except ChainError as e:
                raise ChainError(f"the node rejected a simulated transaction: {e}") from e
        return
    for raw in raws:
        try:
            w3.eth.send_raw_transaction(raw)
        except Exception as e:
            raise ChainError(f"the chain rejected a simulated transaction: {e}") from e
