"""Chunked log reading: bounded ranges, halving when a node refuses a range, nothing lost."""

from __future__ import annotations

import pytest

from chainfl.audit.history import fetch_task_logs
from chainfl.errors import AuditError, ChainError


class _Eth:
    """A node's eth_getLogs over fixed logs that refuses ranges wider than ``max_span`` blocks,
    the way public nodes refuse queries returning too many results."""

    def __init__(self, logs, max_span: int, message: str = "query returned more than 10000 results"):
        self.logs = logs
        self.max_span = max_span
        self.message = message
        self.queries = []

    def get_logs(self, params):
        lo, hi = params["fromBlock"], params["toBlock"]
        self.queries.append((lo, hi))
        assert params["topics"][1] == "0x" + (7).to_bytes(32, "big").hex()
        if hi - lo + 1 > self.max_span:
            raise ValueError(self.message)
        return [log for log in self.logs if lo <= log["blockNumber"] <= hi]


class _W3:
    provider = None          # not an HTTP provider: logs go through w3.eth.get_logs

    def __init__(self, eth):
        self.eth = eth


def test_refused_ranges_are_halved_and_every_log_is_read():
    logs = [{"blockNumber": b, "i": b} for b in range(0, 10_000, 3)]
    eth = _Eth(logs, max_span=700)
    got = fetch_task_logs(_W3(eth), "0xabc", 7, 0, 9_999, chunk=5_000)
    assert [log["i"] for log in got] == [log["i"] for log in logs]
    assert max(hi - lo + 1 for lo, hi in eth.queries) == 5_000           # first try as asked
    served = [(lo, hi) for lo, hi in eth.queries if hi - lo + 1 <= 700]
    assert served[0][0] == 0 and served[-1][1] == 9_999                  # contiguous cover
    assert all(b[0] == a[1] + 1 for a, b in zip(served, served[1:]))


def test_other_errors_are_chain_errors_naming_the_range():
    eth = _Eth([], max_span=10, message="connection reset")
    with pytest.raises(ChainError, match=r"reading registry logs 0\.\.99 .* connection reset"):
        fetch_task_logs(_W3(eth), "0xabc", 7, 0, 99, chunk=100)


def test_chunk_must_be_positive():
    with pytest.raises(AuditError, match="chunk must be >= 1"):
        fetch_task_logs(_W3(_Eth([], 1)), "0xabc", 7, 0, 9, chunk=0)
