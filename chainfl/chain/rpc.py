"""A chain reached over JSON-RPC (Ganache, Anvil, or any Ethereum node).

Transactions are signed locally; batches go out as JSON-RPC batch requests. The dev-chain controls
use ``evm_*`` methods (Anvil and Ganache both have them; Ganache pauses mining with ``miner_stop``).
"""

from __future__ import annotations

import logging
import time

import requests
from web3 import HTTPProvider, Web3

from chainfl.chain.backends import Chain, as_bytes
from chainfl.config import NodeSettings
from chainfl.errors import ChainConnectionError, ChainError, ConfigError, TransactionError

log = logging.getLogger(__name__)


def _hex_bytes(value) -> bytes | None:
    if isinstance(value, str) and value.startswith("0x"):
        try:
            return bytes.fromhex(value[2:])
        except ValueError:
            return None
    return None


def revert_data_from_rpc_error(error: dict) -> bytes:
    """The revert payload in a JSON-RPC error object (Anvil: ``data`` hex; Ganache: ``data`` hex
    or ``data.result``)."""
    data = error.get("data")
    if isinstance(data, dict):
        data = data.get("result", data.get("data"))
    return _hex_bytes(data) or b""


class _Provider(HTTPProvider):
    """HTTPProvider whose connection failures are :class:`ChainConnectionError` (a ChainflError):
    agents retry those with backoff, and the CLI prints them as one clean line."""

    def make_request(self, method, params):
        try:
            return super().make_request(method, params)
        except (requests.ConnectionError, requests.Timeout) as e:
            raise self._lost(method, e) from e

    def make_batch_request(self, batch_requests):
        try:
            return super().make_batch_request(batch_requests)
        except (requests.ConnectionError, requests.Timeout) as e:
            raise self._lost(batch_requests[0][0] if batch_requests else "batch", e) from e

    def _lost(self, method, e) -> ChainConnectionError:
        return ChainConnectionError(f"lost the node at {self.endpoint_uri} during {method} "
                                    f"({type(e).__name__}); is it still running? (`chainfl chain status`)")


class RpcChain(Chain):
    kind = "rpc"

    def __init__(self, url: str, settings: NodeSettings, timeout: float = 60.0):
        provider = _Provider(url, request_kwargs={"timeout": timeout}, exception_retry_configuration=None)
        w3 = Web3(provider)
        try:
            w3.eth.chain_id
        except Exception as e:
            raise ChainConnectionError(
                f"No node at {url} ({type(e).__name__}) — run `chainfl chain up` or pass --rpc") from e
        super().__init__(w3, url, settings)
        try:
            self.client = str(w3.client_version)
        except Exception:
            self.client = "unknown"

    @property
    def is_ganache(self) -> bool:
        return "ganache" in self.client.lower()

    def _rpc(self, method: str, params: list):
        response = self.w3.provider.make_request(method, params)
        if "error" in response:
            raise ChainError(f"{method} failed on {self.url}: {response['error'].get('message')} "
                             f"(is this a dev node? {method} needs Anvil or Ganache)")
        return response.get("result")

    def _revert_data(self, call: dict, block) -> bytes:
        params = {"from": call["from"], "value": hex(int(call.get("value", 0))),
                  "data": "0x" + as_bytes(call.get("data")).hex()}
        if call.get("to"):
            params["to"] = call["to"]
        if call.get("gas"):
            params["gas"] = hex(int(call["gas"]))
        tag = block if isinstance(block, str) else hex(int(block))
        response = self.w3.provider.make_request("eth_call", [params, tag])
        if "error" not in response:
            return b""
        return revert_data_from_rpc_error(response["error"])

    def _mined_revert_data(self, receipt, call: dict) -> bytes:
        # Exact even when earlier transactions of the same block changed the state: Anvil (and
        # geth-style nodes) return the revert output from a struct-log trace with logs disabled.
        # Ganache answers with an empty returnValue: fall back to re-running on the parent block.
        response = self.w3.provider.make_request("debug_traceTransaction", [
            "0x" + bytes(receipt["transactionHash"]).hex(),
            {"disableStorage": True, "disableMemory": True, "disableStack": True, "enableReturnData": True}])
        result = response.get("result") if isinstance(response, dict) else None
        if isinstance(result, dict) and result.get("returnValue"):
            value = result["returnValue"]
            data = _hex_bytes(value if value.startswith("0x") else "0x" + value)
            if data is not None:
                return data
        return super()._mined_revert_data(receipt, call)

    # -- batches ---------------------------------------------------------------------------
    def _send_batch(self, items, chunk):
        raws = self._sign_batch(items)
        hashes: list[bytes] = []
        for start in range(0, len(raws), chunk):
            part = raws[start:start + chunk]
            responses = self.w3.provider.make_batch_request(
                [("eth_sendRawTransaction", ["0x" + raw.hex()]) for raw in part])
            if isinstance(responses, dict):  # the whole batch failed
                self._resync(items)
                raise TransactionError(f"the node rejected a batch of {len(part)} transactions: "
                                       f"{responses.get('error')}")
            for k, response in enumerate(sorted(responses, key=lambda r: int(r["id"]))):
                if "error" in response:
                    tx, signer = items[start + k]
                    self._resync(items)
                    raise TransactionError(
                        f"the node rejected batched transaction {start + k} from {signer.address} "
                        f"(nonce {tx['nonce']}): {response['error'].get('message')}; "
                        f"{len(hashes)} earlier ones were sent")
                hashes.append(bytes.fromhex(response["result"][2:]))
        return hashes

    def _resync(self, items) -> None:
        for address in {signer.address for _, signer in items}:
            self._nonces[address].resync()

    def wait_for_receipts(self, hashes, timeout=None, chunk: int = 500):
        """Receipts of ``hashes`` in order, polled in JSON-RPC batches of ``chunk``."""
        try:
            from web3._utils.method_formatters import receipt_formatter
            from web3.datastructures import AttributeDict

            def fmt(raw, tx_hash):
                return AttributeDict.recursive(receipt_formatter(raw))
        except ImportError:  # pragma: no cover - private web3 helper moved: format one by one
            def fmt(raw, tx_hash):
                return self.w3.eth.get_transaction_receipt(tx_hash)

        limit = timeout or self.receipt_timeout
        deadline = time.monotonic() + limit
        receipts: dict[int, object] = {}
        pending = list(range(len(hashes)))
        while pending:
            still = []
            for start in range(0, len(pending), chunk):
                idxs = pending[start:start + chunk]
                responses = self.w3.provider.make_batch_request(
                    [("eth_getTransactionReceipt", ["0x" + bytes(hashes[i]).hex()]) for i in idxs])
                if isinstance(responses, dict):
                    raise TransactionError(f"receipt batch failed on {self.url}: {responses.get('error')}")
                for i, response in zip(idxs, sorted(responses, key=lambda r: int(r["id"]))):
                    if response.get("result") is None:
                        still.append(i)
                    else:
                        receipts[i] = fmt(response["result"], hashes[i])
            if still and still == pending and time.monotonic() > deadline:
                raise TransactionError(f"{len(still)} of {len(hashes)} transactions not mined after "
                                       f"{limit:.0f} s (automine off? call mine_block())")
            if still:
                if still == pending:
                    self._nudge()
                else:
                    deadline = time.monotonic() + limit  # progress: restart the clock
                time.sleep(0.05)
            pending = still
        return [receipts[i] for i in range(len(hashes))]

    def _nudge(self) -> None:
        """Anvil in automine mode can leave part of a large burst in its pool until the next
        transaction arrives; on a dev node with automine on, mine a block to flush it."""
        if self._automine and getattr(self, "_can_nudge", True):
            try:
                self._rpc("evm_mine", [])
            except ChainError:
                self._can_nudge = False  # not a dev node: just keep waiting

    # -- dev-chain controls ------------------------------------------------------------------
    def automine(self, enabled: bool) -> None:
        if self.is_ganache:
            self._rpc("miner_start" if enabled else "miner_stop", [])
        else:
            self._rpc("evm_setAutomine", [bool(enabled)])
        self._automine = bool(enabled)

    def mine_block(self, timestamp: int | None = None) -> int:
        if timestamp is not None:
            latest = self.latest_timestamp()
            if timestamp <= latest:
                raise ConfigError(f"mine_block: timestamp {timestamp} must be after the latest block's {latest}")
            self._rpc("evm_mine", [int(timestamp)])
        else:
            self._rpc("evm_mine", [])
        return self.block_number()

    def advance_time(self, seconds: int) -> int:
        if seconds < 0:
            raise ConfigError(f"advance_time: seconds must be >= 0, got {seconds}")
        self._rpc("evm_increaseTime", [int(seconds)])
        self._rpc("evm_mine", [])
        return self.latest_timestamp()

    def close(self) -> None:
        session = getattr(self.w3.provider, "_request_session_manager", None)
        cache = getattr(session, "session_cache", None)
        if cache is not None:
            try:
                for _, s in list(cache.items()):
                    s.close()
                cache.clear()
            except Exception:  # closing is best effort
                pass
