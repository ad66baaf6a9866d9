"""Audit of honest and tampered histories, recorded with the real registry, store and learning code.

Each tamper case must be caught *and named*: the violation's kind, round/seq, node and CID.
"""

from __future__ import annotations

import shutil

import pytest
from eth_utils import keccak

from chainfl.audit import audit_task
from chainfl.audit.history import load_history
from chainfl.chain import connect
from chainfl.chain.registry import Mode, RoundDecision
from chainfl.errors import AuditError
from chainfl.storage import open_store
from chainfl.storage.codec import digest, encode_model

from .builders import decode, record_chained, record_federated, setup_registry


def _block_files(store_dir, cid):
    return [p for p in (store_dir / "blocks").rglob(cid) if p.is_file()]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """One chain (in memory) with an honest chained task (one rejection) and an honest federated
    task whose screening flags a boosted update."""
    store_dir = tmp_path_factory.mktemp("audit") / "store"
    store = open_store(store_dir.as_uri())
    with connect("eth-tester://memory") as chain:
        reg_nodes = setup_registry(chain, 4)
        chained = record_chained(chain, store, n_nodes=3, rounds=2, reject_at=3,
                                 registry_nodes=(reg_nodes[0], reg_nodes[1], reg_nodes[2][:3]))
        federated = record_federated(chain, store, n_nodes=4, rounds=2, strategy="screened-fedavg",
                                     poison=1, registry_nodes=reg_nodes)
        yield chain, store_dir, chained, federated


def _copy_store(store_dir, tmp_path):
    target = tmp_path / "store-copy"
    shutil.copytree(store_dir, target)
    return target, open_store(target.as_uri())


# --- honest histories -------------------------------------------------------------------------
def test_honest_chained_history_passes(recorded):
    chain, store_dir, rec, _ = recorded
    report = audit_task(chain, rec.registry, open_store(store_dir.as_uri()), rec.task_id)
    assert report.ok, [str(v) for v in report.violations]
    assert report.mode == "chained"
    assert report.counts["handoffs"] == 6 and report.counts["rejections"] == 1
    # every model recorded is in the lineage, verified
    verified = {e["digest"] for e in report.lineage if e["status"] == "ok"}
    assert {"0x" + d.hex() for d in rec.digests} <= verified
    # per-node summary: 2 handoffs each, the rejection counted on both sides
    assert sorted(n.contributions for n in report.nodes.values()) == [2, 2, 2]
    assert sum(n.rejections_issued for n in report.nodes.values()) == 1
    assert sum(n.rejections_received for n in report.nodes.values()) == 1
    assert [r["round"] for r in report.rounds] == [1, 2]
    (rejection,) = report.flags
    assert rejection["kind"] == "rejection" and rejection["seq"] == 3 and rejection["reason"] == "validation loss worse"
    assert rejection["node"] == rec.nodes[2].address and rejection["by"] == rec.nodes[0].address
    assert report.final["digest"] == "0x" + rec.digests[-1].hex()


def test_honest_federated_history_recomputes_every_aggregate(recorded):
    chain, store_dir, _, rec = recorded
    report = audit_task(chain, rec.registry, open_store(store_dir.as_uri()), rec.task_id)
    assert report.ok, [str(v) for v in report.violations]
    assert [a["match"] for a in report.aggregates] == [True, True]
    assert all(a["recomputed"] == a["digest"] for a in report.aggregates)
    poisoned = rec.nodes[1].address
    assert report.nodes[poisoned].flags == 2 and report.nodes[poisoned].included == 0
    assert all(a["strategy_flagged"] == {poisoned: "screening"} for a in report.aggregates)
    assert [(f["kind"], f["round"], f["node"]) for f in report.flags] == [("flag", 1, poisoned), ("flag", 2, poisoned)]
    assert all(f["reason"].startswith("screening: ") for f in report.flags)
    # the flags are handled misbehaviour: listed per node, the audit stays ok
    assert report.misbehaving() == {poisoned: {"flagged:screening": 2}}
    d = report.to_dict()
    assert d["ok"] is True and d["counts"]["aggregates_recomputed"] == 2


def test_release_is_verified_against_the_final_model(recorded):
    chain, store_dir, rec, _ = recorded
    report = audit_task(chain, rec.registry, open_store(store_dir.as_uri()), rec.task_id)
    if rec.release is None:
        assert report.release is None      # contract without release support: nothing to check
        return
    # nobody checked the final head (no reports): the last accepted model is the release
    assert report.release["status"] == "ok" and report.release["matches_final"] == "accepted"
    assert report.release["meta"]["threshold"] == rec.threshold == 0.5


def test_history_is_read_in_small_chunks_identically(recorded):
    chain, _, rec, _ = recorded
    whole = load_history(rec.registry, rec.task_id, chunk=10_000)
    chunked = load_history(rec.registry, rec.task_id, chunk=1)
    assert whole.events == chunked.events > 0
    assert [s.at for s in whole.steps] == [s.at for s in chunked.steps]


def test_unknown_task_is_an_audit_error(recorded):
    chain, store_dir, rec, _ = recorded
    with pytest.raises(AuditError, match="no TaskCreated event"):
        audit_task(chain, rec.registry, open_store(store_dir.as_uri()), 999)


# --- tampering ----------------------------------------------------------------------------------
def test_modified_blob_is_named(recorded, tmp_path):
    chain, store_dir, rec, _ = recorded
    target, store = _copy_store(store_dir, tmp_path)
    cid = rec.cids[2]                                # handoff seq 2
    (path,) = _block_files(target, cid)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    report = audit_task(chain, rec.registry, store, rec.task_id)
    assert not report.ok
    (v,) = report.violations
    assert v.kind == "blob-modified" and v.cid == cid and v.seq == 2
    assert v.node == rec.nodes[1].address
    assert cid in str(v) and "seq 2" in str(v)


def test_missing_blob_is_named(recorded, tmp_path):
    chain, store_dir, _, rec = recorded
    target, store = _copy_store(store_dir, tmp_path)
    cid = rec.cids[1]                                # round 1, first node's update
    for path in _block_files(target, cid):
        path.unlink()
    report = audit_task(chain, rec.registry, store, rec.task_id)
    kinds = {v.kind for v in report.violations}
    assert "blob-missing" in kinds
    (missing,) = [v for v in report.violations if v.kind == "blob-missing"]
    assert missing.cid == cid and missing.round == 1 and missing.node == rec.nodes[0].address
    # without that update the round's aggregate cannot be recomputed: also reported, for round 1 only
    assert [v.round for v in report.violations if v.kind == "aggregate-unverifiable"] == [1]


def test_aggregate_that_does_not_match_its_inputs_is_named(tmp_path):
    store = open_store((tmp_path / "store").as_uri())
    with connect("eth-tester://memory") as chain:
        rec = record_federated(chain, store, n_nodes=3, rounds=1, strategy="fedavg", close=False)
        reg, coord = rec.registry, rec.coordinator
        # round 2: honest updates, but the coordinator finalizes a doctored aggregate
        r = reg.open_round(rec.task_id, chain.latest_timestamp() + 3600, coord)
        g_state, _ = decode(store, rec.cids[-1])
        for i, node in enumerate(rec.nodes):
            state = {k: v + 0.01 * (i + 1) for k, v in g_state.items()}
            blob = encode_model(state, {"kind": "update", "task": rec.task_id, "node": node.address, "step": r})
            reg.submit_update(rec.task_id, r, rec.digests[-1], digest(blob), store.put(blob), 10, 0.5, node)
        wrong = {k: v + 0.5 for k, v in g_state.items()}
        blob = encode_model(wrong, {"kind": "aggregate", "round": r})
        cid = store.put(blob)
        reg.finalize_round(rec.task_id, r, digest(blob), cid, RoundDecision(included=[n.address for n in rec.nodes]),
                           coord)
        report = audit_task(chain, reg, store, rec.task_id)
    (v,) = report.violations
    assert v.kind == "aggregate-mismatch" and v.round == 2 and v.cid == cid
    assert v.node == coord.address
    assert "does not recompute from the round's updates" in str(v) and "round 2" in str(v)
    assert [a["match"] for a in report.aggregates] == [True, False]


def _task_slot(task_id: int, mapping_slot: int = 3) -> int:
    """Storage slot of ``_tasks[task_id].head`` (ChainflRegistry: _tasks is slot 3, head is field 0)."""
    return int.from_bytes(keccak(task_id.to_bytes(32, "big") + mapping_slot.to_bytes(32, "big")), "big")


def test_handoff_out_of_order_on_anvil_is_named(anvil_url, tmp_path):
    """Force the contract to accept a parent that is not the head: overwrite the task's head slot
    with ``anvil_setStorageAt``, then record a handoff on that forged head."""
    store = open_store((tmp_path / "store").as_uri())
    with connect(anvil_url) as chain:
        rec = record_chained(chain, store, n_nodes=2, rounds=1, close=False)
        reg = rec.registry
        assert reg.task(rec.task_id).head == rec.digests[-1]
        forged_state, _ = decode(store, rec.cids[0])              # an older model becomes "head"
        forged = encode_model({k: v * 2 for k, v in forged_state.items()}, {"kind": "forged"})
        forged_d = digest(forged)
        store.put(forged)
        chain.w3.provider.make_request("anvil_setStorageAt",
                                       [reg.address, hex(_task_slot(rec.task_id)), "0x" + forged_d.hex()])
        assert reg.task(rec.task_id).head == forged_d
        nxt = rec.nodes[0]                                       # node 0's turn (wrapped)
        blob = encode_model({k: v + 1 for k, v in forged_state.items()}, {"kind": "handoff"})
        cid = store.put(blob)
        reg.record_handoff(rec.task_id, forged_d, digest(blob), cid, 5, 0.3, rec.nodes[1], nxt)
        report = audit_task(chain, reg, store, rec.task_id)
    kinds = [v.kind for v in report.violations]
    assert kinds == ["handoff-order"], [str(v) for v in report.violations]
    (v,) = report.violations
    assert v.seq == 3 and v.node == nxt.address and v.cid == cid
    assert "out of order" in str(v) and "0x" + forged_d.hex() in str(v)


def test_state_overwritten_without_event_is_named_on_anvil(anvil_url, tmp_path):
    store = open_store((tmp_path / "store").as_uri())
    with connect(anvil_url) as chain:
        rec = record_chained(chain, store, n_nodes=2, rounds=1, close=False)
        reg = rec.registry
        chain.w3.provider.make_request("anvil_setStorageAt",
                                       [reg.address, hex(_task_slot(rec.task_id)), "0x" + rec.digests[0].hex()])
        report = audit_task(chain, reg, store, rec.task_id)
    (v,) = report.violations
    assert v.kind == "state-mismatch" and "without an event" in v.message


def test_audit_runs_on_every_chain_backend(chain_url, tmp_path):
    store = open_store((tmp_path / "store").as_uri())
    with connect(chain_url) as chain:
        rec = record_federated(chain, store, n_nodes=3, rounds=1, strategy="median")
        report = audit_task(chain, rec.registry, store, rec.task_id)
        assert chain.w3.eth.block_number >= report.counts["to_block"]
    assert report.ok, [str(v) for v in report.violations]
    assert report.aggregates[0]["match"] and rec.registry.task(rec.task_id).mode == Mode.FEDERATED


def _eth_tester_set_storage(chain, address: str, slot: int, value: bytes) -> None:
    """Overwrite one storage slot of the embedded chain's state (py-evm), then mine a block."""
    from eth_utils import to_canonical_address

    with chain.evm.lock:
        pychain = chain.evm.backend.chain
        state = pychain.get_vm().state
        state.set_storage(to_canonical_address(address), slot, int.from_bytes(value, "big"))
        state.persist()
        pychain.header = pychain.header.copy(state_root=state.state_root)
    chain.mine_block()


def test_handoff_out_of_order_on_eth_tester_is_named(tmp_path):
    """The same forgery on the embedded chain, by editing py-evm's state directly."""
    store = open_store((tmp_path / "store").as_uri())
    with connect("eth-tester://memory") as chain:
        rec = record_chained(chain, store, n_nodes=2, rounds=1, close=False)
        reg = rec.registry
        forged_state, _ = decode(store, rec.cids[0])
        forged = encode_model({k: v * 3 for k, v in forged_state.items()}, {"kind": "forged"})
        store.put(forged)
        _eth_tester_set_storage(chain, reg.address, _task_slot(rec.task_id), digest(forged))
        assert reg.task(rec.task_id).head == digest(forged)
        blob = encode_model({k: v - 1 for k, v in forged_state.items()}, {"kind": "handoff"})
        cid = store.put(blob)
        reg.record_handoff(rec.task_id, digest(forged), digest(blob), cid, 5, 0.3, rec.nodes[1], rec.nodes[0])
        report = audit_task(chain, reg, store, rec.task_id)
    assert [v.kind for v in report.violations] == ["handoff-order"], [str(v) for v in report.violations]
    (v,) = report.violations
    assert v.seq == 3 and v.node == rec.nodes[0].address and v.cid == cid


def test_missing_blob_is_named_on_every_store_backend(store_url):
    """A handoff recorded with the CID of bytes never put into the store (embedded or IPFS daemon)
    and then accepted by the next node: the audit waits at most ``timeout`` and names it. While it
    is the unaccepted head it is only a warning (nobody built on it; the release would not be it)."""
    from chainfl.storage import compute_cid

    store = open_store(store_url)
    with connect("eth-tester://memory") as chain:
        rec = record_chained(chain, store, n_nodes=2, rounds=1, close=False)
        state, _ = decode(store, rec.cids[-1])
        blob = encode_model({k: v + 0.25 for k, v in state.items()}, {"kind": "never stored"})
        cid = compute_cid(blob)
        rec.registry.record_handoff(rec.task_id, rec.digests[-1], digest(blob), cid, 7, 0.2, rec.nodes[1],
                                    rec.nodes[0])
        honest_part_ok = all(store.has(c) for c in rec.cids)
        pending = audit_task(chain, rec.registry, store, rec.task_id, timeout=3.0)
        on_top = encode_model({k: v + 0.5 for k, v in state.items()},
                              {"kind": "handoff", "task": rec.task_id, "node": rec.nodes[1].address, "step": 3})
        rec.registry.record_handoff(rec.task_id, digest(blob), digest(on_top), store.put(on_top), 7, 0.2,
                                    rec.nodes[0], rec.nodes[1])
        report = audit_task(chain, rec.registry, store, rec.task_id, timeout=3.0)
    assert honest_part_ok
    assert pending.ok and any("unaccepted handoff seq 3" in w for w in pending.warnings)
    (v,) = report.violations
    assert v.kind == "blob-missing" and v.cid == cid and v.seq == 3 and v.node == rec.nodes[0].address
    assert "accepted handoff seq 3" in str(v)


def test_release_that_is_not_the_final_model_is_named(tmp_path):
    from .builders import release_meta

    store = open_store((tmp_path / "store").as_uri())
    with connect("eth-tester://memory") as chain:
        rec = record_chained(chain, store, n_nodes=2, rounds=1, close=False)
        initial, _ = decode(store, rec.cids[0])                  # not what training produced
        blob = encode_model(initial, release_meta(rec.spec, 0.5))
        cid = store.put(blob)
        rec.registry.close_task(rec.task_id, digest(blob), cid, rec.coordinator)
        report = audit_task(chain, rec.registry, store, rec.task_id)
    (v,) = report.violations
    assert v.kind == "release-mismatch" and v.cid == cid and v.node == rec.coordinator.address
    assert report.release["status"] == "release-mismatch"


def test_skipped_turn_is_consistent_and_counted(tmp_path):
    store = open_store((tmp_path / "store").as_uri())
    with connect("eth-tester://memory") as chain:
        rec = record_chained(chain, store, n_nodes=3, rounds=1, skip_at=1, close=False)
        report = audit_task(chain, rec.registry, store, rec.task_id)
    assert report.ok, [str(v) for v in report.violations]
    assert report.counts["skips"] == 1
    assert report.nodes[rec.nodes[1].address].skipped == 1
    assert report.warnings == []          # every handoff followed the spec's visiting order
    n0, n1, n2 = (n.address for n in rec.nodes)
    assert {a: n.contributions for a, n in report.nodes.items()} == {n0: 2, n1: 0, n2: 1}
