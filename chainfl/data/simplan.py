"""The pure half of the activity simulator: who sends what to whom, in which block, at what time.

:func:`make_plan` is a deterministic function of :class:`SimConfig` (seed included) and touches no
chain: it derives the accounts' keys from the seed, draws every account's behaviour, and replays
the intended transfers in time order against the balances they would have, so every planned
transaction is affordable when it is sent (funds received in a block are spent from the next block
on; gas is reserved at the maximum fee). :mod:`chainfl.data.simulator` sends the plan.

Roles. Normal (label 0):

* ``exchange`` — hot wallets: pay out withdrawals to users, receive deposits and merchant sweeps,
  refilled by the funder (the "cold wallet") when low.
* ``merchant`` — receive many small payments, sweep to an exchange every few days.
* ``casual`` — most accounts: a withdrawal or two, a few payments to merchants, friends and dapps,
  maybe a deposit back. Some (``casual`` with ``hunter`` behaviour) claim airdrops like sybils do.
* ``bot`` — deploy a contract, then transact on a near-regular schedule with a few counterparties.
* ``payroll`` — a withdrawal in, then the same pay to the same 4-20 people every 5-8 days.
* ``faucet`` — small gifts to 10-40 users. Casual friends also pass money round in small rings.

Anomalous (label 1): one group of each typology, then more groups in turn until the anomalous
share is reached (group sizes are capped at ``max(3, n_accounts // 12)`` so small simulations keep
room for normal users; below ~60 accounts the anomalous share is therefore above the target):

* ``phishing`` — a collector that victims (casual users) send almost their whole balance to,
  then forwards the loot to exchanges.
* ``ponzi`` — fan-in of deposits from many investors, fan-out of smaller "returns" to earlier
  investors, then an exit to an exchange.
* ``wash`` — a ring of 3-5 accounts passing nearly the same amount around, many times.
* ``sybil`` — a farmer funds a cluster of fresh accounts with identical amounts in one block; each
  claims from an airdrop contract with a tiny transfer and sweeps back to the farmer (the farmer's
  typology is ``sybil-farmer``).
* ``dusting`` — tiny amounts sent to many unrelated addresses.
* ``peel`` — a chain: each hop forwards most of its balance to the next account and peels a small
  part off to an exchange.

Overlap is deliberate: phishing collectors with one or two victims look like casual users, airdrop
hunters like sybils, payroll like a Ponzi's fan-out, faucets like dusting, friends' rings like wash
trading, bots' regular transfers like a wash ring's; and ``label_noise`` flips the recorded label of a share of accounts (``true_label`` keeps
the truth), so the task is learnable but not trivial.
"""

from __future__ import annotations

import heapq
from dataclasses import asdict, dataclass, field

import numpy as np

from chainfl.errors import ConfigError

GWEI = 10**9
ETHER = 10**18
FUNDER = -1                           # sender index of the funder (known only when sending)
MAX_DEFERRALS = 10                    # an unaffordable intent waits at most this many blocks, then is dropped
GAS_TRANSFER = 21_000                 # plain transfer to an externally owned account
GAS_CALL = 30_000                     # transfer to one of the simulator's contracts (code: STOP)
GAS_CREATE = 80_000                   # creation of such a contract
#: Init code deploying a 1-byte contract ``0x00`` (STOP): it accepts any ether sent to it.
CREATE_CODE = "0x600060005360016000f3"

NORMAL_ROLES = ("exchange", "merchant", "casual", "bot", "payroll", "faucet")
ANOMALOUS_ROLES = ("phishing", "ponzi", "wash", "sybil", "sybil-farmer", "dusting", "peel")
TYPOLOGIES = ("phishing", "ponzi", "wash", "sybil", "dusting", "peel")


@dataclass(frozen=True)
class SimConfig:
    """Everything a simulation depends on (same config -> same plan, byte for byte)."""

    n_accounts: int = 200            # simulated accounts (all labelled); the funder is extra
    seed: int = 0                    # derives keys and every random choice
    days: float = 14.0               # simulated period
    anomaly_share: float = 0.2       # target share of anomalous accounts (at least one group per typology)
    label_noise: float = 0.03        # share of accounts whose recorded label is flipped
    activity: float = 1.0            # scales normal accounts' transaction counts
    txs_per_block: int = 40          # target mean transactions per block (sets the block interval)
    max_txs_per_block: int = 300     # hard cap (a block holds ~1400 transfers at 30M gas)
    max_fee_gwei: float = 4.0        # maxFeePerGas; gas is reserved at this price
    priority_fee_gwei: float = 1.0   # maxPriorityFeePerGas

    def __post_init__(self):
        if self.n_accounts < 30:
            raise ConfigError(f"n_accounts must be >= 30 to hold every typology, got {self.n_accounts}")
        if not 0 <= self.anomaly_share < 0.6 or not 0 <= self.label_noise < 0.5:
            raise ConfigError("anomaly_share must be in [0, 0.6) and label_noise in [0, 0.5)")
        if self.days <= 0 or self.activity <= 0 or self.txs_per_block < 1:
            raise ConfigError("days, activity and txs_per_block must be positive")
        if not 1 <= self.max_txs_per_block <= 1000:
            raise ConfigError("max_txs_per_block must be in 1..1000 (a 30M-gas block holds ~1400 transfers)")


@dataclass(frozen=True)
class SimAccount:
    index: int
    address: str                     # lower-case hex
    role: str                        # see NORMAL_ROLES / ANOMALOUS_ROLES
    true_label: int                  # 1 for anomalous roles
    label: int                       # recorded label (flipped for label_noise accounts)


@dataclass(frozen=True)
class PlannedTx:
    sender: int                      # account index, or FUNDER
    to: str | None                   # recipient address; None creates a contract
    value: int                       # wei
    gas: int
    nonce: int | None                # known for simulated accounts (fresh: start at 0); None for the funder
    created: str | None = None       # address of the created contract (creations only)


@dataclass(frozen=True)
class PlannedBlock:
    offset: int                      # seconds after the simulation start
    txs: tuple[PlannedTx, ...]


@dataclass
class Plan:
    config: SimConfig
    accounts: list[SimAccount]
    keys: list[bytes] = field(repr=False)
    blocks: list[PlannedBlock]
    contracts: dict[str, int]        # contract address -> creator index
    dropped: int = 0                 # intents the balances could not cover (after deferrals)

    @property
    def n_txs(self) -> int:
        return sum(len(b.txs) for b in self.blocks)

    def funding_needed(self) -> int:
        """Wei the funder sends (values + its own gas at the maximum fee)."""
        fee = int(self.config.max_fee_gwei * GWEI)
        return sum(t.value + t.gas * fee for b in self.blocks for t in b.txs if t.sender == FUNDER)

    def txs(self, start_time: int = 0, first_block: int = 1, funder: str = "0x" + "f" * 40) -> list:
        """The plan as :class:`chainfl.data.features.Tx` records, as if mined from ``first_block``
        on at ``start_time + offset`` (what :func:`simulator.send_plan` writes on a quiet chain)."""
        from chainfl.data.features import Tx

        return [Tx(first_block + k, start_time + block.offset,
                   funder if t.sender == FUNDER else self.accounts[t.sender].address, t.to, t.value, t.created)
                for k, block in enumerate(self.blocks) for t in block.txs]

    def labels(self, true: bool = False) -> dict[str, int]:
        return {a.address: (a.true_label if true else a.label) for a in self.accounts}

    def summary(self) -> dict:
        roles: dict[str, int] = {}
        for a in self.accounts:
            roles[a.role] = roles.get(a.role, 0) + 1
        return {"accounts": len(self.accounts), "blocks": len(self.blocks), "txs": self.n_txs,
                "positives": sum(a.label for a in self.accounts), "roles": roles, "dropped": self.dropped,
                "funding_ether": self.funding_needed() / ETHER, "config": asdict(self.config)}


def account_key(seed: int, index: int) -> bytes:
    """Private key of simulated account ``index`` under ``seed`` (keccak of a fixed label)."""
    from eth_utils import keccak

    return keccak(f"chainfl-simulator|seed={seed}|account={index}".encode())


def _address(key: bytes) -> str:
    from eth_account import Account

    return Account.from_key(key).address.lower()


# --- intents --------------------------------------------------------------------------------
# An intent is (time, seq, sender, to, amount, kind, tries). amount: int wei, or a float in (0, 1]
# meaning "this share of what the sender can spend when the intent is replayed".

class _Intents:
    def __init__(self):
        self.heap: list = []
        self.seq = 0

    def add(self, t: float, sender: int, to, amount, kind: str = "transfer") -> None:
        heapq.heappush(self.heap, (float(t), self.seq, sender, to, amount, kind, 0))
        self.seq += 1


def _eth(x: float) -> int:
    """Ether -> wei, rounded to whole gwei so values print cleanly."""
    return max(1, int(round(x * 1e9))) * GWEI


def _assign_roles(cfg: SimConfig, rng: np.random.Generator) -> tuple[list[str], list[list[int]]]:
    n = cfg.n_accounts
    budget = int(round(cfg.anomaly_share * n))
    roles: list[str] = []
    groups: list[list[int]] = []       # anomalous groups (indices), in creation order
    k = 0
    cap = max(3, n // 12)              # group size cap, so small simulations keep room for normal users
    while budget > 0 or k < len(TYPOLOGIES):   # the first round holds every typology
        typ = TYPOLOGIES[k % len(TYPOLOGIES)]
        size = {"phishing": 1, "ponzi": 1, "dusting": 1, "wash": min(cap, int(rng.integers(3, 6))),
                "sybil": min(cap, int(rng.integers(4, 9))), "peel": min(cap, int(rng.integers(4, 9)))}[typ]
        if k >= len(TYPOLOGIES) and size > budget:
            break
        start = len(roles)
        roles += ["sybil-farmer"] + ["sybil"] * (size - 1) if typ == "sybil" else [typ] * size
        groups.append(list(range(start, len(roles))))
        budget -= size
        k += 1
    rest = n - len(roles)
    n_ex = max(1, rest // 100)
    n_merchant = max(2, rest // 20)
    n_bot = max(2, rest // 20)
    n_payroll = max(1, rest // 50)
    n_faucet = max(1, rest // 100)
    roles += (["exchange"] * n_ex + ["merchant"] * n_merchant + ["bot"] * n_bot + ["payroll"] * n_payroll
              + ["faucet"] * n_faucet)
    roles += ["casual"] * (n - len(roles))
    order = rng.permutation(n)              # shuffle so index says nothing about the role
    shuffled = [roles[i] for i in order]
    position = {int(old): new for new, old in enumerate(order)}
    return shuffled, [[position[i] for i in g] for g in groups]


def make_plan(cfg: SimConfig) -> Plan:
    """The whole simulation as planned blocks of affordable transactions (pure, deterministic)."""
    rng = np.random.default_rng([cfg.seed, 0x5EED])
    roles, groups = _assign_roles(cfg, rng)
    n = cfg.n_accounts
    keys = [account_key(cfg.seed, i) for i in range(n)]
    addr = [_address(k) for k in keys]
    T = cfg.days * 86_400.0
    by_role: dict[str, list[int]] = {}
    for i, r in enumerate(roles):
        by_role.setdefault(r, []).append(i)
    exchanges, merchants = by_role["exchange"], by_role["merchant"]
    casual, bots = by_role["casual"], by_role["bot"]
    it = _Intents()
    dapps: list[int] = []              # bots whose contract is a dapp users pay into

    # Normal behaviour --------------------------------------------------------------------
    for e in exchanges:
        it.add(rng.uniform(0, 0.01 * T), FUNDER, addr[e], _eth(rng.uniform(20, 60)))
    for b in bots:
        it.add(rng.uniform(0, 0.02 * T), FUNDER, addr[b], _eth(rng.uniform(0.5, 3)))
        it.add(rng.uniform(0.02 * T, 0.05 * T), b, None, 0, "create")
        dapps.append(b)
        period = rng.uniform(1.5, 10) * 3600 / cfg.activity
        peers = [addr[j] for j in rng.choice(casual + merchants, size=int(rng.integers(1, 4)), replace=False)]
        value = rng.uniform(0.001, 0.02)
        t = rng.uniform(0.05 * T, 0.2 * T)
        while t < T:
            target = peers[int(rng.integers(len(peers)))] if rng.random() < 0.5 else ("contract", b)
            it.add(t, b, target, _eth(value * rng.uniform(0.9, 1.1)))
            t += period * rng.uniform(0.85, 1.15)
    for p in by_role["payroll"]:        # fan-out like a Ponzi's, but regular and from a withdrawal
        staff = [addr[int(j)] for j in rng.choice(casual, size=min(len(casual), int(rng.integers(4, 21))), replace=False)]
        pay = rng.lognormal(-1.5, 0.5)
        it.add(rng.uniform(0, 0.05 * T), exchanges[int(rng.integers(len(exchanges)))], addr[p],
               _eth(pay * len(staff) * 5))
        t = rng.uniform(0.05 * T, 0.2 * T)
        while t < T:
            for a in staff:
                it.add(t + rng.uniform(0, 600), p, a, _eth(pay * rng.uniform(0.95, 1.05)))
            t += rng.uniform(5, 8) * 86_400
    for f in by_role["faucet"]:          # many tiny gifts like dusting, but larger and to fewer
        it.add(rng.uniform(0, 0.02 * T), FUNDER, addr[f], _eth(0.5))
        t = rng.uniform(0.02 * T, 0.5 * T)
        for a in rng.choice(casual, size=min(len(casual), int(rng.integers(10, 41))), replace=False):
            it.add(t, f, addr[int(a)], _eth(rng.uniform(0.001, 0.005)))
            t += rng.exponential(3600)
    for _ in range(max(1, len(casual) // 40)):   # friends passing money round, like a wash ring
        ring = [int(j) for j in rng.choice(casual, size=min(len(casual), int(rng.integers(3, 5))), replace=False)]
        t = rng.uniform(0.3 * T, 0.8 * T)
        for _ in range(int(rng.integers(2, 7))):
            for k, m in enumerate(ring):
                it.add(t, m, addr[ring[(k + 1) % len(ring)]], float(rng.uniform(0.2, 0.6)))
                t += rng.uniform(600, 86_400)
    hunters = set(int(i) for i in rng.choice(casual, size=max(1, len(casual) // 10), replace=False))
    first_in: dict[int, float] = {}    # casual user -> time of the first withdrawal
    for c in casual:
        t = first_in[c] = rng.uniform(0, 0.7 * T)
        for _ in range(1 + int(rng.random() < 0.5)):
            it.add(t, exchanges[int(rng.integers(len(exchanges)))], addr[c], _eth(rng.lognormal(-1.0, 1.0)))
            t2 = t
            t += rng.uniform(0.05, 0.3) * T
        for _ in range(int(rng.poisson(6 * cfg.activity))):
            t2 += rng.exponential(0.08 * T)
            u = rng.random()
            if u < 0.55:
                it.add(t2, c, addr[merchants[int(rng.integers(len(merchants)))]], _eth(rng.lognormal(-3.5, 1.0)))
            elif u < 0.8:
                it.add(t2, c, addr[casual[int(rng.integers(len(casual)))]], float(rng.uniform(0.05, 0.4)))
            else:
                it.add(t2, c, ("contract", dapps[int(rng.integers(len(dapps)))]), _eth(rng.lognormal(-4, 1)))
        if c in hunters:
            it.add(t2 + rng.uniform(600, 7200), c, ("contract", dapps[0]), _eth(0.0001))
        if rng.random() < 0.3:
            it.add(t2 + rng.exponential(0.05 * T), c, addr[exchanges[int(rng.integers(len(exchanges)))]],
                   float(rng.uniform(0.5, 0.95)))
    for m in merchants:
        it.add(rng.uniform(0, 0.02 * T), FUNDER, addr[m], _eth(0.01))
        t = rng.uniform(2, 4) * 86_400
        while t < T:
            it.add(t, m, addr[exchanges[int(rng.integers(len(exchanges)))]], float(rng.uniform(0.7, 0.95)))
            t += rng.uniform(2, 4) * 86_400

    # Anomalous behaviour -----------------------------------------------------------------
    free_casual = [c for c in casual if c not in hunters]
    for g in groups:
        typ = "sybil" if roles[g[0]] == "sybil-farmer" else roles[g[0]]
        start = rng.uniform(0.05 * T, 0.6 * T)
        if typ == "phishing":
            victims = rng.choice(free_casual, size=min(len(free_casual), int(rng.integers(1, 16))), replace=False)
            last = start
            for v in victims:
                tv = max(start, first_in[int(v)] + 3600) + rng.exponential(0.1 * T)
                it.add(tv, int(v), addr[g[0]], float(rng.uniform(0.85, 0.98)))
                last = max(last, tv)
            for k in range(int(rng.integers(1, 4))):
                it.add(last + (k + 1) * rng.uniform(1800, 86_400), g[0],
                       addr[exchanges[int(rng.integers(len(exchanges)))]], float(rng.uniform(0.6, 0.95)))
        elif typ == "ponzi":
            op = g[0]
            it.add(start - 3600, FUNDER, addr[op], _eth(0.05))
            investors = rng.choice(free_casual, size=min(len(free_casual), int(rng.integers(5, 31))), replace=False)
            times = np.sort(start + rng.uniform(0, 0.3 * T, size=len(investors)))
            for k, (v, tv) in enumerate(zip(investors, times)):
                it.add(tv, int(v), addr[op], _eth(rng.lognormal(-1.2, 0.6)))
                if k >= 2:      # pay an earlier investor a "return"
                    j = int(rng.integers(0, k))
                    it.add(tv + rng.uniform(600, 6 * 3600), op, addr[int(investors[j])], float(rng.uniform(0.1, 0.3)))
            it.add(times[-1] + rng.uniform(3600, 86_400), op, addr[exchanges[0]], 0.97)
        elif typ == "wash":
            for m in g:
                it.add(start - rng.uniform(600, 3600), FUNDER, addr[m], _eth(rng.uniform(1, 5)))
            amount = rng.uniform(0.5, 2.0)
            t = start
            for _ in range(int(rng.integers(5, 21))):
                for k, m in enumerate(g):
                    it.add(t, m, addr[g[(k + 1) % len(g)]], _eth(amount * rng.uniform(0.99, 1.01)))
                    t += rng.uniform(300, 5400)
        elif typ == "sybil":
            farmer, sybils = g[0], g[1:]
            it.add(start - 3600, FUNDER, addr[farmer], _eth(0.05 * len(sybils) + 0.05))
            for s in sybils:
                it.add(start, farmer, addr[s], _eth(0.02))
                tc = start + rng.uniform(1800, 86_400)
                it.add(tc, s, ("contract", dapps[0]), _eth(0.0001))
                it.add(tc + rng.uniform(3600, 3 * 86_400), s, addr[farmer], 0.95)
        elif typ == "dusting":
            targets = rng.choice(n, size=min(n - 1, int(rng.integers(20, 81))), replace=False)
            it.add(start - 3600, FUNDER, addr[g[0]], _eth(0.05))
            t = start
            for v in targets:
                if int(v) != g[0]:
                    it.add(t, g[0], addr[int(v)], _eth(rng.uniform(1e-6, 2e-5)))
                    t += rng.uniform(5, 900)
        elif typ == "peel":
            it.add(start - 3600, FUNDER, addr[g[0]], _eth(rng.uniform(10, 50)))
            t = start
            for k in range(len(g) - 1):
                it.add(t, g[k], addr[exchanges[int(rng.integers(len(exchanges)))]], float(rng.uniform(0.03, 0.08)))
                it.add(t + 1, g[k], addr[g[k + 1]], 0.97)
                t += rng.uniform(1800, 18_000)
            it.add(t, g[-1], addr[exchanges[int(rng.integers(len(exchanges)))]], 0.95)

    blocks, contracts, dropped = _replay(cfg, it, addr, set(exchanges), T)
    true_labels = [1 if r in ANOMALOUS_ROLES else 0 for r in roles]
    flip = set(int(i) for i in rng.choice(n, size=int(round(cfg.label_noise * n)), replace=False))
    accounts = [SimAccount(i, addr[i], roles[i], true_labels[i], true_labels[i] ^ (i in flip)) for i in range(n)]
    return Plan(cfg, accounts, keys, blocks, contracts, dropped)


def _replay(cfg: SimConfig, it: _Intents, addr: list[str], exchanges: set[int], T: float):
    """Replay intents in time order against balances; bucket them into blocks."""
    from chainfl.data.features import contract_address

    fee = int(cfg.max_fee_gwei * GWEI)
    n_intents = len(it.heap)
    # Block interval: about txs_per_block transactions a block, at most 6 hours, a multiple of 12 s.
    dt = min(21_600, max(12, int(round(T * cfg.txs_per_block / max(1, n_intents) / 12)) * 12))
    spendable = [0] * len(addr)        # as of the previous block, minus what this block spends
    incoming = [0] * len(addr)         # received in the current block
    nonce = [0] * len(addr)
    index = {a: i for i, a in enumerate(addr)}
    refilled: set[int] = set()         # exchanges refilled in the current block
    contract_of: dict[int, str] = {}   # creator -> its (first) contract
    contracts: dict[str, int] = {}
    blocks: dict[int, list[PlannedTx]] = {}
    current = -1
    dropped = 0
    while it.heap:
        t, seq, sender, to, amount, kind, tries = heapq.heappop(it.heap)
        b = int(t // dt)
        if b != current:               # a new block: last block's receipts become spendable
            for i, v in enumerate(incoming):
                if v:
                    spendable[i] += v
                    incoming[i] = 0
            refilled.clear()
            current = b

        def defer():
            nonlocal dropped
            if tries < MAX_DEFERRALS:
                heapq.heappush(it.heap, ((b + 1) * dt, seq, sender, to, amount, kind, tries + 1))
            else:
                dropped += 1

        if len(blocks.get(b, ())) >= cfg.max_txs_per_block:
            heapq.heappush(it.heap, ((b + 1) * dt, seq, sender, to, amount, kind, tries))
            continue
        if isinstance(to, tuple):       # ("contract", creator): only once it exists
            target = contract_of.get(to[1])
            if target is None:
                defer()
                continue
            to, gas = target, GAS_CALL
        else:
            gas = GAS_CREATE if kind == "create" else GAS_TRANSFER
        if sender == FUNDER:
            value = int(amount)
        else:
            available = spendable[sender] - gas * fee
            value = int(available * amount) // GWEI * GWEI if isinstance(amount, float) else int(amount)
            if available <= 0 or value > available or (isinstance(amount, float) and value <= 0):
                if sender in exchanges and not isinstance(amount, float) and sender not in refilled:
                    refilled.add(sender)
                    refill = max(_eth(10), 5 * value)     # the cold wallet tops the hot wallet up
                    blocks.setdefault(b, []).append(PlannedTx(FUNDER, addr[sender], refill, GAS_TRANSFER, None))
                    incoming[sender] += refill
                defer()
                continue
            spendable[sender] -= value + gas * fee
        created = None
        if kind == "create":
            created = contract_address(addr[sender], nonce[sender])
            contract_of.setdefault(sender, created)
            contracts[created] = sender
            to = None
        else:
            to_index = index.get(to)
            if to_index is not None:
                incoming[to_index] += value
        tx = PlannedTx(sender, to, value, gas, None if sender == FUNDER else nonce[sender], created)
        if sender != FUNDER:
            nonce[sender] += 1
        blocks.setdefault(b, []).append(tx)
    planned = [PlannedBlock(int((b + 1) * dt), tuple(txs)) for b, txs in sorted(blocks.items())]
    return planned, contracts, dropped
