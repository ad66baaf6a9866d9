"""Feature extraction on ordinary (non-archive) nodes.

Two Anvil processes with the same genesis time receive the same simulation, so they hold the same
blocks (block hashes are compared); one keeps every state (archive), one runs with
``--prune-history`` and keeps only the latest state, like an ordinary node. ``chainfl data
features`` must give byte-identical output on both, equal to an independent computation from the
simulator's ledger. A hand-made chain exercises every rule for telling contracts from accounts
(module docstring of ``chainfl.data.features``) on eth-tester, an archive Anvil and a pruned one.
"""

from __future__ import annotations

import csv

import pytest
from click.testing import CliRunner

from chainfl import config
from chainfl.chain import connect
from chainfl.chain.nodes import LocalNode, rpc_request
from chainfl.cli import main
from chainfl.data import extract_features, simulate
from chainfl.data.features import FeatureResult, FeatureState, Tx, contract_address, is_contract_code

from .twins import CHAIN_BACKENDS, NEEDS_ANVIL, start_twins

E = 10**18


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """(archive url, pruned url, simulation): the same 40-account simulation on both nodes."""
    if "anvil" not in CHAIN_BACKENDS:
        pytest.skip(NEEDS_ANVIL)
    archive, pruned = start_twins(tmp_path_factory.mktemp("twins"), "features")
    try:
        sims = []
        for node in (archive, pruned):
            with connect(node.url) as chain:
                sims.append(simulate(chain, n_accounts=40, seed=5, progress=False))
        assert sims[0].ledger == sims[1].ledger
        yield archive.url, pruned.url, sims[1]
    finally:
        pruned.stop()
        archive.stop()


def test_the_pruned_node_keeps_no_history_and_both_hold_the_same_blocks(twins):
    archive, pruned, sim = twins
    account = sim.ledger[0].to
    assert rpc_request(archive, "eth_getCode", [account, "0x1"]) == "0x"
    with pytest.raises(ValueError, match="BlockOutOfRange"):      # what archive-state reads hit
        rpc_request(pruned, "eth_getCode", [account, "0x1"])
    for number in range(sim.from_block, sim.to_block + 1):
        hashes = [rpc_request(url, "eth_getBlockByNumber", [hex(number), False])["hash"] for url in (archive, pruned)]
        assert hashes[0] == hashes[1], number


def _ledger_features(sim, first: int, last: int) -> FeatureResult:
    """The pure core fed from the simulator's own record of what it sent (no chain reads)."""
    state = FeatureState()
    state.contracts.update({c: True for c in sim.contracts})      # none of them self-destructs
    txs = [Tx(t.block, t.timestamp, t.sender, t.to, t.value, t.created) for t in sim.ledger if first <= t.block <= last]
    return FeatureResult(state.add_all(txs, next_block=last + 1))


def test_data_features_on_a_pruned_node_equals_the_archive_node_and_the_ledger(twins, tmp_path):
    archive, pruned, sim = twins
    first = (sim.from_block + sim.to_block) // 2
    created_before = {t.created: t.block for t in sim.ledger if t.created}
    paid_in_range = [t for t in sim.ledger if first <= t.block and created_before.get(t.to, first) < first]
    assert paid_in_range, "the range must pay contracts created before it (their code is read at latest)"
    outputs = []
    for url in (archive, pruned):
        out = tmp_path / f"{len(outputs)}.csv"
        result = CliRunner().invoke(main, ["data", "features", "--rpc", url, "--from-block", str(first),
                                           "--to-block", str(sim.to_block), "-o", str(out), "--quiet"])
        assert result.exit_code == 0, result.output
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
    rows = list(csv.DictReader(outputs[1].decode().splitlines()))
    expected = _ledger_features(sim, first, sim.to_block).dataset()
    assert [r["address"] for r in rows] == expected.ids and len(rows) > 20
    for row, values in zip(rows, expected.X.tolist()):
        assert [float(row[n]) for n in expected.feature_names] == values, row["address"]
    with connect(pruned) as chain:                                   # the library, whole range, two passes
        part = extract_features(chain.w3, sim.from_block, first - 1, progress=False)
        both = extract_features(chain.w3, None, sim.to_block, state=part.state, progress=False)
    ledger = sim.ledger_features()
    assert both.state.to_dict()["accounts"] == ledger.state.to_dict()["accounts"]
    assert {a for a, c in both.state.contracts.items() if c} == set(sim.contracts)
    assert both.dataset().X.tobytes() == ledger.dataset().X.tobytes()


# --- every contract rule, on every node kind ---------------------------------------------------
# Runtime: empty calldata -> STOP (accepts ether); any calldata -> SELFDESTRUCT to the caller.
DESTRUCTIBLE = "0x6009600c60003960096000f3" + "361560075733ff5b00"
# Runtime: any call CREATEs a child whose runtime is a single STOP (it accepts ether).
FACTORY = "0x6017600c60003960176000f3" + "69600060005360016000f3600052600a60166000f05000"
REVERTING = "0x60006000fd"                                         # init code that reverts


@pytest.fixture(scope="module")
def pruned_anvil(tmp_path_factory):
    if "anvil" not in CHAIN_BACKENDS:
        pytest.skip(NEEDS_ANVIL)
    node = LocalNode("anvil", config.load_node_settings(), port=0, log_dir=tmp_path_factory.mktemp("pruned"),
                     extra_args=("--prune-history",))
    node.start(timeout=60)
    yield node.url
    node.stop()


@pytest.fixture(params=[b for b in CHAIN_BACKENDS if b in ("eth-tester", "anvil")] + ["anvil --prune-history"])
def rules_chain(request):
    if request.param == "eth-tester":
        return "eth-tester://memory"
    if request.param == "anvil":
        return request.getfixturevalue("anvil_url")
    return request.getfixturevalue("pruned_anvil")


def _send(chain, sender, txs, ok=True):
    receipts = chain.send_many([{"gas": 200_000, "value": 0, **t} for t in txs], sender, check=False)
    for r in receipts:
        assert (r["status"] == 1) == ok, r
    return receipts


def test_contract_rules_on_every_node_kind(rules_chain):
    with connect(rules_chain) as chain:
        s = chain.account(90 + len(rules_chain) % 7)                # a fresh sender per backend
        eoa = "0x" + "e0" * 20
        (r_before,) = _send(chain, s, [{"data": DESTRUCTIBLE}])
        (r_factory,) = _send(chain, s, [{"data": FACTORY}])
        k_before, factory = r_before["contractAddress"].lower(), r_factory["contractAddress"].lower()
        child = contract_address(factory, 1)                          # a contract's first CREATE: nonce 1
        first = chain.block_number() + 1
        _send(chain, s, [{"to": k_before, "value": 1 * E}, {"to": k_before, "data": "0x01"}])  # paid, then destroyed
        (r_in,) = _send(chain, s, [{"data": DESTRUCTIBLE}])
        k_in = r_in["contractAddress"].lower()
        _send(chain, s, [{"to": k_in, "value": 2 * E}, {"to": k_in, "data": "0x01"}, {"to": k_in, "value": 3 * E},
                         {"to": factory}, {"to": child, "value": 4 * E}])
        (r_fail,) = _send(chain, s, [{"data": REVERTING}], ok=False)
        failed = contract_address(s.address.lower(), chain.w3.eth.get_transaction(r_fail["transactionHash"])["nonce"])
        _send(chain, s, [{"to": failed, "value": 5 * E, "gas": 21_000}, {"to": eoa, "value": 6 * E, "gas": 21_000}])
        result = extract_features(chain.w3, first, None, progress=False)
        assert chain.w3.eth.get_code(chain.w3.to_checksum_address(child)) != b""
    contracts = result.state.contracts
    assert contracts[k_in] is True             # rule 1: created by a top-level transaction of the range
    assert contracts[factory] is True          # rule 2: code at the latest block (created before the range)
    assert contracts[child] is True            # rule 2: created inside a contract call, code at latest
    assert contracts[failed] is False          # a failed creation leaves no contract
    assert contracts[eoa] is False
    assert contracts[k_before] is False        # the documented limit: destroyed before latest, created before the range
    f = result.state.features(s.address.lower())
    assert f["Number of Created Contracts"] == 2                    # k_in and the failed creation
    assert f["Sent tnx"] == 9 and f["Unique Sent To Addresses"] == 6
    assert f["total Ether sent"] == 1 + 5 + 6                       # k_before (limit), failed, eoa
    assert f["total ether sent contracts"] == 2 + 3 + 4             # k_in twice (also after it died), child
    assert f["max val sent to contract"] == 4 and f["min value sent to contract"] == 0
    assert {a for a in result.dataset().ids} >= {eoa, failed, k_before} and k_in not in result.dataset().ids


def test_a_delegation_designator_is_not_contract_code():
    assert is_contract_code(b"\x00") and is_contract_code(bytes.fromhex("6080604052"))
    assert not is_contract_code(b"")
    assert not is_contract_code(bytes.fromhex("ef0100") + b"\x11" * 20)          # EIP-7702: an EOA
    assert is_contract_code(bytes.fromhex("ef0100") + b"\x11" * 21)              # not a designator
