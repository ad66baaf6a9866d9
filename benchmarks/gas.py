#!/usr/bin/env python
"""Gas of every registry operation for tasks of 5, 50 and 200 nodes, on each reachable chain.

Usage:
    .venv/bin/python benchmarks/gas.py [--rpc http://127.0.0.1:8545 --rpc http://127.0.0.1:8546]
                                       [--nodes 5 --nodes 50 --nodes 200] [--out benchmarks/results/gas.md]

The embedded eth-tester chain is always measured; each ``--rpc`` adds a JSON-RPC node (start them
with ``chainfl chain up``). Every node count gets a freshly deployed registry whose every member is
a node of the measured tasks (the task's node set is written on chain at creation, so createTask
grows with it; nothing else should). CIDs are realistic 59-character CIDv1 strings. The first
handoff of a task is listed apart (``accepted`` already equals the parent). The table reports
gasUsed from the receipts (min-max over repetitions) and checks the target: handoff and submission
<= 65,000 and identical at every node count.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import platform
import sys
from collections import defaultdict
from importlib import metadata
from pathlib import Path

from chainfl.chain import connect
from chainfl.chain.registry import Mode, Registry, RoundDecision

CID = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"  # 59 chars, as the store prints
TARGET = 65_000
TARGET_OPS = ("recordHandoff", "submitUpdate (first in task)", "submitUpdate (later rounds)")
ROUNDS = 3


def D(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def measure(url: str, n_nodes: int) -> dict[str, list[int]]:
    """Run every operation on a fresh registry with ``n_nodes`` members; gasUsed lists by operation."""
    gas: dict[str, list[int]] = defaultdict(list)

    def record(op: str, receipt) -> None:
        gas[op].append(int(receipt["gasUsed"]))

    with connect(url) as chain:
        admin, coord = chain.account(0), chain.account(1)
        nodes = [chain.account(2 + i) for i in range(n_nodes)]
        reg = Registry.deploy(chain, admin)
        record("set_coordinator (grant)", reg.set_coordinator(coord, True, admin))
        for n in nodes:
            record("addNode", reg.add_node(n, admin))
        # the same four senders at every node count (calldata costs 4 gas per zero byte and 16 per
        # other byte, so other addresses would differ by a few gas); the other registered nodes
        # would show any dependence of the gas on the number of nodes
        a, b, c, d = nodes[:4]

        # chained: a ring of handoffs, a rejection, a skip; every registered node is in the task
        task = reg.create_task(D("cfg"), CID, Mode.CHAINED, D("m0"), CID, nodes, coord)
        record("createTask (chained)", _last(reg, "TaskCreated", chain))
        ring, head = [a, b, c, d], D("m0")
        for i in range(8):
            sender, nxt = ring[i % 4], ring[(i + 1) % 4]
            new = D(f"m{i + 1}")
            op = "recordHandoff (first of task)" if i == 0 else "recordHandoff"
            record(op, reg.record_handoff(task, head, new, CID, 1000 + i, 0.5, nxt, sender))
            head = new
        receiver = ring[8 % 4]
        record("rejectHandoff", reg.reject_handoff(task, head, "validation F1 dropped", receiver))
        record("skipTurn", reg.skip_turn(task, b, coord))
        record("closeTask (with release)", reg.close_task(task, D("release"), CID, coord, "2 passes done"))

        # federated: rounds with 4 submissions, decided at once (2 included, 1 excluded, 1 flagged)
        fed = reg.create_task(D("cfg"), CID, Mode.FEDERATED, D("g0"), CID, nodes, coord)
        record("createTask (federated)", _last(reg, "TaskCreated", chain))
        glob = D("g0")
        for r in range(1, ROUNDS + 1):
            rnd = reg.open_round(fed, chain.latest_timestamp() + 3600, coord)
            record("openRound", _last(reg, "RoundOpened", chain))
            op = "submitUpdate (first in task)" if r == 1 else "submitUpdate (later rounds)"
            for i, n in enumerate((a, b, c, d)):
                record(op, reg.submit_update(fed, rnd, glob, D(f"u{r}.{i}"), CID, 500 + i, 0.3, n))
            new = D(f"g{r}")
            decision = RoundDecision(included=[a.address, b.address], excluded=[c.address],
                                     flagged={d.address: "screening: norm 41x the median"})
            record("finalizeRound (4 decided: 2 in, 1 out, 1 flagged)",
                   reg.finalize_round(fed, rnd, new, CID, decision, coord))
            glob = new
        rnd = reg.open_round(fed, chain.latest_timestamp() + 3600, coord)
        record("abandonRound (no update)", reg.abandon_round(fed, rnd, RoundDecision(), "no update was submitted",
                                                             coord))

        record("removeNode", reg.remove_node(a, admin))
        record("set_coordinator (revoke)", reg.set_coordinator(coord, False, admin))
        record("transferAdmin", reg.transfer_admin(coord, admin))
    return gas


def _last(reg: Registry, name: str, chain):
    """Receipt of the transaction that emitted the latest ``name`` event (for calls returning ids)."""
    latest = chain.block_number()
    event = reg.events(from_block=latest, to_block=latest, names=[name])[-1]
    return chain.w3.eth.get_transaction_receipt(event.tx_hash)


def versions() -> str:
    from chainfl.chain.registry import registry_artifact

    parts = [f"solc {registry_artifact()['compiler']['version']}", f"Python {platform.python_version()}"]
    for dist in ("web3", "eth-tester", "py-evm"):
        try:
            parts.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(parts)


def node_version(url: str) -> str:
    if url.startswith("eth-tester"):
        return "eth-tester (py-evm, in process)"
    with connect(url) as chain:
        return f"{chain.w3.client_version} at {url}"


def fmt(values: list[int]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:,}" if lo == hi else f"{lo:,}–{hi:,}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Registry gas per operation at several node counts.")
    parser.add_argument("--rpc", action="append", default=[], help="JSON-RPC node URL (repeatable)")
    parser.add_argument("--nodes", action="append", type=int, default=[], help="registered nodes (repeatable)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gas.md")
    args = parser.parse_args(argv)
    counts = args.nodes or [5, 50, 200]
    urls = ["eth-tester://memory", *args.rpc]

    results: dict[tuple[str, int], dict[str, list[int]]] = {}
    for url in urls:
        for n in counts:
            print(f"measuring {url} with {n} nodes ...", file=sys.stderr)
            results[(url, n)] = measure(url, n)

    ops = list(next(iter(results.values())).keys())
    columns = [(u, n) for u in urls for n in counts]
    names = {u: node_name(u) for u in urls}
    lines = [
        "# Registry gas per operation",
        "",
        f"Command: `.venv/bin/python benchmarks/gas.py {' '.join(sys.argv[1:]) if argv is None else ' '.join(argv)}`".rstrip(),
        f"Date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"Versions: {versions()}",
        "Chains: " + "; ".join(node_version(u) for u in urls),
        "",
        f"gasUsed from receipts (min–max over repetitions); CIDs are 59-character CIDv1 strings; "
        f"{ROUNDS} federated rounds with 4 submissions each; the same four senders at every node count; "
        f"every registered node is a node of both tasks.",
        "Ranges of a few gas come from calldata (a zero byte in a digest or address costs 4 gas, "
        "others 16). openRound costs ~20k more the first time (its slot starts at zero) and "
        "2,800 less when the new deadline equals the previous one (same block second). createTask writes "
        "one slot per task node (the only operation that grows with the node set).",
        "",
        "| operation | " + " | ".join(f"{names[u]} / {n} nodes" for u, n in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for op in ops:
        lines.append(f"| {op} | " + " | ".join(fmt(results[c][op]) for c in columns) + " |")

    verdicts = []
    ok = True
    for op in TARGET_OPS:
        worst = max(max(results[c][op]) for c in columns)
        same = all(sorted(set(results[(u, n)][op])) == sorted(set(results[(u, counts[0])][op]))
                   for u in urls for n in counts)
        ok &= worst <= TARGET and same
        verdicts.append(f"- {op}: max {worst:,} gas ({'≤' if worst <= TARGET else '>'} {TARGET:,}); "
                        f"{'identical' if same else 'DIFFERENT'} at {', '.join(map(str, counts))} nodes")
    lines += ["", "Target (handoff and submission ≤ 65,000 gas, independent of the node count): "
              + ("met" if ok else "NOT met"), *verdicts, ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0 if ok else 1


def node_name(url: str) -> str:
    """Short column name: eth-tester, ganache, anvil (from the client version) or the URL."""
    if url.startswith("eth-tester"):
        return "eth-tester"
    with connect(url) as chain:
        client = str(chain.w3.client_version).split("/")[0].lower()
    return client if client else url.split("//")[-1]


if __name__ == "__main__":
    sys.exit(main())
