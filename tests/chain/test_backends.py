"""One suite for every chain backend (eth-tester in memory, Ganache, Anvil via ``chain_url``),
plus the embedded chain's persistence and locking and the URL factory's errors.

The contracts are hand-assembled EVM bytecode, so the suite needs no compiler: a sink that
accepts any call, an emitter that logs one event per call, and reverters whose revert payload we
choose byte for byte.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import pytest
from eth_abi import encode as abi_encode
from eth_utils import keccak

from chainfl.chain import connect
from chainfl.config import load_node_settings
from chainfl.errors import (
    ChainConnectionError,
    ChainLockedError,
    ConfigError,
    TransactionError,
    TransactionReverted,
)

FIRST_DEV_ADDRESSES = ["0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
                       "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"]
CUSTOM_ERROR = bytes.fromhex("deadbeef") + abi_encode(["uint256", "address"], [42, FIRST_DEV_ADDRESSES[1]])
ERROR_STRING = bytes.fromhex("08c379a0") + abi_encode(["string"], ["not your turn"])
TOPIC = keccak(text="Poked()")
POKE_ABI = [{"type": "function", "name": "poke", "stateMutability": "payable",
             "inputs": [{"name": "x", "type": "uint256"}], "outputs": []}]


# -- a tiny EVM assembler -------------------------------------------------------------------------
def _push(value: bytes) -> bytes:
    assert 1 <= len(value) <= 32
    return bytes([0x5F + len(value)]) + value


def revert_code(payload: bytes) -> bytes:
    """Runtime code that reverts with exactly ``payload``."""
    code = b""
    padded = payload + b"\x00" * (-len(payload) % 32)
    for offset in range(0, len(padded), 32):
        code += _push(padded[offset:offset + 32]) + _push(offset.to_bytes(2, "big")) + b"\x52"  # MSTORE
    return code + _push(len(payload).to_bytes(2, "big")) + _push(b"\x00") + b"\xfd"  # REVERT


EMIT_CODE = _push(TOPIC) + _push(b"\x00") + _push(b"\x00") + b"\xa1" + b"\x00"  # LOG1(0,0,topic); STOP
SINK_CODE = b"\x00"  # STOP


def init_code(runtime: bytes) -> bytes:
    """Init code that deploys ``runtime``."""
    n = len(runtime).to_bytes(2, "big")
    # PUSH2 n, PUSH2 <offset>, PUSH1 0, CODECOPY, PUSH2 n, PUSH1 0, RETURN  (15 bytes)
    head_len = 15
    head = _push(n) + _push(head_len.to_bytes(2, "big")) + _push(b"\x00") + b"\x39" + _push(n) + _push(b"\x00") + b"\xf3"
    assert len(head) == head_len
    return head + runtime


def deploy(chain, runtime: bytes, gas: int | None = None) -> str:
    factory = chain.w3.eth.contract(abi=POKE_ABI, bytecode=init_code(runtime))
    receipt = chain.transact(factory.constructor(), chain.accounts[0], gas=gas)
    assert receipt["status"] == 1
    return receipt["contractAddress"]


def contract_at(chain, address):
    return chain.w3.eth.contract(address=address, abi=POKE_ABI)


@pytest.fixture
def chain(chain_url):
    with connect(chain_url) as c:
        yield c


# -- backend-generic suite -----------------------------------------------------------------------
def test_dev_accounts_are_the_same_and_funded_on_every_backend(chain):
    settings = load_node_settings()
    assert [a.address for a in chain.accounts[:2]] == FIRST_DEV_ADDRESSES
    assert len(chain.accounts) == settings.account_count
    assert chain.w3.eth.get_balance(chain.accounts[-1].address) > 10**18
    assert chain.kind in ("eth-tester", "rpc")
    assert chain.chain_id == chain.w3.eth.chain_id


def test_transact_returns_a_successful_receipt_and_send_ether_moves_value(chain):
    address = deploy(chain, EMIT_CODE)
    receipt = chain.transact(contract_at(chain, address).functions.poke(7), chain.accounts[1])
    assert receipt["status"] == 1
    assert [log["topics"][0] for log in receipt["logs"]] == [TOPIC]

    to = chain.accounts[5].address
    before = chain.w3.eth.get_balance(to)
    receipt = chain.send_ether(chain.accounts[2], to, 12345)
    assert receipt["status"] == 1
    assert chain.w3.eth.get_balance(to) - before == 12345


@pytest.mark.parametrize("payload", [CUSTOM_ERROR, ERROR_STRING, b""], ids=["custom", "string", "empty"])
@pytest.mark.parametrize("gas", [None, 200_000], ids=["estimated", "explicit-gas"])
def test_revert_raises_transaction_error_with_exact_revert_data(chain, payload, gas):
    address = deploy(chain, revert_code(payload))
    poke = contract_at(chain, address).functions.poke(1)

    with pytest.raises(TransactionError) as info:
        chain.transact(poke, chain.accounts[1], gas=gas)

    assert isinstance(info.value, TransactionReverted)
    assert info.value.revert_data == payload
    if gas is not None:  # mined with status 0: the receipt travels with the error
        assert info.value.receipt["status"] == 0
    if payload == ERROR_STRING:
        assert "not your turn" in str(info.value)


def test_reverting_constructor_raises_with_revert_data(chain):
    factory = chain.w3.eth.contract(abi=POKE_ABI, bytecode=revert_code(CUSTOM_ERROR))
    with pytest.raises(TransactionReverted) as info:
        chain.transact(factory.constructor(), chain.accounts[0])
    assert info.value.revert_data == CUSTOM_ERROR


def test_a_revert_does_not_break_later_transactions_of_the_sender(chain):
    bad = deploy(chain, revert_code(CUSTOM_ERROR))
    sender = chain.accounts[3]
    with pytest.raises(TransactionReverted):
        chain.transact(contract_at(chain, bad).functions.poke(1), sender)
    with pytest.raises(TransactionReverted):
        chain.transact(contract_at(chain, bad).functions.poke(1), sender, gas=100_000)
    assert chain.send_ether(sender, chain.accounts[4].address, 1)["status"] == 1


def test_concurrent_sends_from_threads_do_not_collide_on_nonces(chain):
    shared = chain.accounts[6]
    start_nonce = chain.w3.eth.get_transaction_count(shared.address)
    errors: list[Exception] = []
    receipts = []

    def work(k):
        try:
            for _ in range(5):
                receipts.append(chain.send_ether(shared, chain.accounts[7].address, 1))
                receipts.append(chain.send_ether(chain.accounts[8 + k], chain.accounts[7].address, 1))
        except Exception as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    assert len(receipts) == 40 and all(r["status"] == 1 for r in receipts)
    assert chain.w3.eth.get_transaction_count(shared.address) == start_nonce + 20


def test_nonce_manager_resyncs_after_an_outside_send(chain):
    sender = chain.accounts[12]
    chain.send_ether(sender, chain.accounts[0].address, 1)  # the manager now holds a counter
    outside = sender.sign_transaction({
        "to": chain.accounts[0].address, "value": 1, "gas": 21_000, "maxFeePerGas": 10**11,
        "maxPriorityFeePerGas": 10**9, "chainId": chain.chain_id,
        "nonce": chain.w3.eth.get_transaction_count(sender.address)})
    chain.w3.eth.wait_for_transaction_receipt(chain.w3.eth.send_raw_transaction(outside.raw_transaction))

    receipt = chain.send_ether(sender, chain.accounts[0].address, 1)

    assert receipt["status"] == 1


def test_send_many_sends_a_batch_from_several_senders_in_order(chain):
    a, b, to = chain.accounts[13], chain.accounts[14], chain.accounts[15].address
    sink = deploy(chain, EMIT_CODE)
    before = chain.w3.eth.get_balance(to)
    txs = [{"to": to, "value": i + 1} for i in range(30)]
    txs += [{"to": to, "value": 1000, "sender": b} for _ in range(20)]
    txs += [{"to": sink, "data": b"\x01\x02", "sender": b}]

    receipts = chain.send_many(txs, a)

    assert len(receipts) == 51 and all(r["status"] == 1 for r in receipts)
    assert chain.w3.eth.get_balance(to) - before == sum(range(1, 31)) + 20 * 1000
    nonces = [chain.w3.eth.get_transaction(r["transactionHash"])["nonce"] for r in receipts[:30]]
    assert nonces == sorted(nonces) and len(set(nonces)) == 30
    assert receipts[-1]["logs"][0]["topics"][0] == TOPIC


def test_send_many_reports_a_reverted_item(chain):
    bad = deploy(chain, revert_code(CUSTOM_ERROR))
    to = chain.accounts[16].address
    with pytest.raises(TransactionReverted) as info:
        chain.send_many([{"to": to, "value": 1}, {"to": bad, "data": b"\x01", "gas": 100_000}],
                        chain.accounts[16])
    assert "item 1" in str(info.value)
    assert info.value.revert_data == CUSTOM_ERROR


def test_automine_off_then_mine_block_at_a_timestamp(chain):
    sender = chain.accounts[17]
    target = chain.latest_timestamp() + 1000
    chain.automine(False)
    try:
        hashes = [chain.send_ether(sender, chain.accounts[18].address, i + 1, wait=False) for i in range(3)]
        hashes += chain.send_many([{"to": chain.accounts[18].address, "value": 10 + i} for i in range(3)],
                                  chain.accounts[21], wait=False)
        number = chain.mine_block(timestamp=target)
    finally:
        chain.automine(True)
    receipts = chain.wait_for_receipts(hashes)

    assert len(set(hashes)) == 6
    assert {r["blockNumber"] for r in receipts} == {number}
    assert len(chain.w3.eth.get_block(number)["transactions"]) == 6
    assert all(r["status"] == 1 for r in receipts)
    assert chain.w3.eth.get_block(number)["timestamp"] == target
    assert chain.latest_timestamp() >= target


def test_transactions_wait_for_mine_block_while_automine_is_off(chain):
    sender = chain.accounts[22]
    before = chain.block_number()
    chain.automine(False)
    try:
        tx_hash = chain.send_ether(sender, chain.accounts[0].address, 1, wait=False)
        with pytest.raises(TransactionError, match="not mined"):
            chain.wait_for_receipts([tx_hash], timeout=1)
        assert chain.block_number() == before
    finally:
        chain.automine(True)  # mines what is pending
    assert chain.wait_for_receipt(tx_hash)["status"] == 1


def test_mine_block_refuses_a_timestamp_in_the_past(chain):
    with pytest.raises(ConfigError, match="must be after"):
        chain.mine_block(timestamp=chain.latest_timestamp() - 10)


def test_advance_time_moves_block_time_forward(chain):
    before = chain.latest_timestamp()
    chain.advance_time(3 * 3600)
    after = chain.latest_timestamp()
    assert after - before >= 3 * 3600
    # later blocks stay in the moved time
    chain.send_ether(chain.accounts[19], chain.accounts[0].address, 1)
    assert chain.latest_timestamp() >= after


def test_account_beyond_account_count_is_funded_on_first_use(chain):
    index = len(chain.accounts) + 7
    account = chain.account(index)
    assert chain.w3.eth.get_balance(account.address) > 0
    assert chain.send_ether(account, chain.accounts[0].address, 1)["status"] == 1
    assert chain.account(index).address == account.address


def test_get_logs_over_bounded_block_ranges(chain):
    emitter = contract_at(chain, deploy(chain, EMIT_CODE))
    blocks = [chain.transact(emitter.functions.poke(i), chain.accounts[20], gas=60_000)["blockNumber"]
              for i in range(4)]

    every = chain.w3.eth.get_logs({"fromBlock": blocks[0], "toBlock": blocks[-1], "address": emitter.address})
    middle = chain.w3.eth.get_logs({"fromBlock": blocks[1], "toBlock": blocks[2], "address": emitter.address})

    assert [log["blockNumber"] for log in every] == blocks
    assert [log["blockNumber"] for log in middle] == blocks[1:3]


# -- URL factory ---------------------------------------------------------------------------------
def test_unknown_scheme_names_the_valid_ones():
    with pytest.raises(ConfigError) as info:
        connect("ws://127.0.0.1:8545")
    assert "eth-tester://" in str(info.value) and "http://" in str(info.value)


def test_unknown_embedded_variant_is_a_config_error():
    with pytest.raises(ConfigError, match="eth-tester://memory"):
        connect("eth-tester://ramdisk")


def test_unreachable_node_says_what_to_do():
    with pytest.raises(ChainConnectionError, match="chainfl chain up"):
        connect("http://127.0.0.1:9")  # discard port: nothing listens


# -- embedded chain on disk -----------------------------------------------------------------------
def test_embedded_chain_persists_state_across_reopen(tmp_path):
    with connect("eth-tester://", home=tmp_path) as chain:
        address = deploy(chain, EMIT_CODE)
        chain.send_ether(chain.accounts[1], chain.accounts[2].address, 777)
        number = chain.block_number()
        balance = chain.w3.eth.get_balance(chain.accounts[2].address)
        nonce = chain.w3.eth.get_transaction_count(chain.accounts[1].address)

    with connect("eth-tester://", home=tmp_path) as chain:
        assert chain.block_number() == number
        assert chain.w3.eth.get_balance(chain.accounts[2].address) == balance
        assert chain.w3.eth.get_code(address) == EMIT_CODE
        receipt = chain.transact(contract_at(chain, address).functions.poke(1), chain.accounts[1])
        assert receipt["blockNumber"] == number + 1
        assert chain.w3.eth.get_transaction_count(chain.accounts[1].address) == nonce + 1
    assert (tmp_path / "chain" / "chain.sqlite").exists()


def test_embedded_chain_keeps_advanced_time_across_reopen(tmp_path):
    with connect("eth-tester://", home=tmp_path) as chain:
        moved = chain.advance_time(10 * 86400)
    with connect("eth-tester://", home=tmp_path) as chain:
        chain.send_ether(chain.accounts[0], chain.accounts[1].address, 1)
        assert chain.latest_timestamp() > moved


_CHILD = textwrap.dedent("""
    import os, sys
    from chainfl.chain import connect
    from chainfl.errors import ChainLockedError
    mode, home = sys.argv[1], sys.argv[2]
    if mode == "open":
        try:
            connect("eth-tester://", home=home)
        except ChainLockedError as e:
            print("LOCKED", e)
            sys.exit(3)
        print("OPENED")
    elif mode == "crash":
        chain = connect("eth-tester://", home=home)
        for _ in range(5):
            chain.send_ether(chain.accounts[0], chain.accounts[1].address, 1)
        chain.automine(False)
        chain.send_ether(chain.accounts[0], chain.accounts[1].address, 1, wait=False)  # never mined
        os._exit(9)  # no close(): simulate a crash
""")


def _child(mode, home):
    return subprocess.run([sys.executable, "-c", _CHILD, mode, str(home)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": os.getcwd()})


def test_a_second_process_gets_chain_locked_error(tmp_path):
    with connect("eth-tester://", home=tmp_path):
        result = _child("open", tmp_path)
        assert result.returncode == 3, result.stdout + result.stderr
        assert f"in use by pid {os.getpid()}" in result.stdout
        assert "chainfl chain up" in result.stdout
    with connect("eth-tester://", home=tmp_path):  # released on close
        pass


def test_the_lock_error_in_process_too(tmp_path):
    with connect("eth-tester://", home=tmp_path):
        with pytest.raises(ChainLockedError):
            connect("eth-tester://", home=tmp_path)


def test_a_crash_keeps_every_mined_block_and_nothing_half_written(tmp_path):
    result = _child("crash", tmp_path)
    assert result.returncode == 9, result.stderr

    with connect("eth-tester://", home=tmp_path) as chain:
        assert chain.block_number() == 5
        assert chain.w3.eth.get_transaction_count(chain.accounts[0].address) == 5
        assert chain.send_ether(chain.accounts[0], chain.accounts[1].address, 1)["blockNumber"] == 6


def test_reopening_with_other_dev_settings_is_refused(tmp_path):
    settings = load_node_settings()
    with connect("eth-tester://", home=tmp_path, settings=settings):
        pass
    from dataclasses import replace
    with pytest.raises(ConfigError, match="different MNEMONIC"):
        connect("eth-tester://", home=tmp_path, settings=replace(settings, account_count=3))


# -- accounts and signing (no chain needed) --------------------------------------------------------
def test_fast_signing_gives_the_same_bytes_as_eth_account():
    from chainfl.chain.accounts import derive_account, sign_transaction

    account = derive_account(load_node_settings().mnemonic, 5)
    base = {"gas": 90_000, "chainId": 1337, "maxFeePerGas": 10**11, "maxPriorityFeePerGas": 10**9}
    txs = [dict(base, to=FIRST_DEV_ADDRESSES[0], value=7, nonce=0),
           dict(base, to=FIRST_DEV_ADDRESSES[1], value=0, nonce=1, data=b"\x01\x02"),
           dict(base, value=0, nonce=2, data="0x6001"),                       # contract creation
           {"to": FIRST_DEV_ADDRESSES[0], "value": 1, "gas": 21_000, "gasPrice": 10**9,
            "nonce": 3, "chainId": 1337}]                                     # legacy: slow path
    for tx in txs:
        assert sign_transaction(account, tx) == bytes(account.sign_transaction(tx).raw_transaction)


def test_keystore_round_trip_and_wrong_password(tmp_path):
    import json as _json

    from eth_account import Account

    from chainfl.chain.accounts import load_keystore

    account = Account.create()
    path = tmp_path / "key.json"
    path.write_text(_json.dumps(Account.encrypt(account.key, "pw", iterations=2)))

    assert load_keystore(path, "pw").address == account.address
    with pytest.raises(ConfigError, match="wrong password"):
        load_keystore(path, "nope")
    with pytest.raises(ConfigError, match="does not exist"):
        load_keystore(tmp_path / "missing.json", "pw")


def test_an_explicit_embedded_directory(tmp_path):
    url = f"eth-tester://{tmp_path / 'somewhere'}"
    with connect(url) as chain:
        chain.send_ether(chain.accounts[0], chain.accounts[1].address, 1)
    assert (tmp_path / "somewhere" / "chain.sqlite").exists()
    with connect(url) as chain:
        assert chain.block_number() == 1


def test_revert_data_is_exact_when_an_earlier_transaction_in_the_block_caused_the_revert(chain):
    # Two senders, one block: A deploys a reverter, B calls its (predicted) address. On the parent
    # block's state that address is empty (the call would succeed with no data); in the block, B's
    # call reverts with CUSTOM_ERROR. Only an exact replay recovers it.
    from eth_utils import to_checksum_address
    from rlp import encode as rlp_encode

    deployer, caller = chain.accounts[23], chain.accounts[24]
    nonce = chain.w3.eth.get_transaction_count(deployer.address)
    predicted = to_checksum_address(keccak(rlp_encode([bytes.fromhex(deployer.address[2:]), nonce]))[12:])
    chain.automine(False)
    try:
        deploy_hash = chain.send_transaction({"data": init_code(revert_code(CUSTOM_ERROR)), "gas": 200_000},
                                             deployer, wait=False)
        call_hash = chain.send_transaction({"to": predicted, "data": b"\x01", "gas": 100_000}, caller,
                                           wait=False)
        number = chain.mine_block()
    finally:
        chain.automine(True)
    deployed, called = chain.wait_for_receipts([deploy_hash, call_hash])
    assert deployed["contractAddress"] == predicted and deployed["blockNumber"] == called["blockNumber"] == number
    assert called["status"] == 0

    with pytest.raises(TransactionReverted) as info:
        chain._check(called, {"to": predicted, "data": b"\x01", "gas": 100_000}, caller)

    if "ganache" in getattr(chain, "client", "").lower():
        pytest.xfail("Ganache's debug_traceTransaction returns no revert output; the parent-state "
                     "replay cannot see the same-block deployment")
    assert info.value.revert_data == CUSTOM_ERROR
