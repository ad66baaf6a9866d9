"""The canonical account-level feature schema.

Feature names are the numeric columns of the public "Ethereum Fraud Detection Dataset"
(``../shared/data/eth_fraud``), with surrounding spaces stripped (the CSV writes many of them as
``" Total ERC20 tnxs"`` and one as ``"max value received "``). Every feature describes one address's
transaction history. Units: ether for values, minutes for times, plain counts otherwise.

``DERIVED_FROM_CHAIN`` lists the features :func:`chainfl.data.features.extract_features` computes
from raw blocks (plain transactions: sender, recipient, value, timestamp). The ERC20 features need
token-transfer logs and token metadata and are not derived from chain data here; a model meant to
run on both the real dataset and chain-derived features should use ``DERIVED_FROM_CHAIN`` only.
:func:`chain_computable` splits any feature list into the two (``chainfl detect`` refuses a model
that reads a feature outside ``DERIVED_FROM_CHAIN``; a task can check its list when it is created).
"""

from __future__ import annotations

from typing import Iterable

#: Column holding the label in the real dataset (1 = fraud/illicit, 0 = normal).
LABEL = "FLAG"
#: Column holding the account address in the real dataset.
ADDRESS = "Address"

#: canonical name -> meaning (in the dataset's column order).
FEATURES: dict[str, str] = {
    "Avg min between sent tnx": "mean gap between consecutive sent transactions, minutes (0 if < 2 sent)",
    "Avg min between received tnx": "mean gap between consecutive received transactions, minutes (0 if < 2 received)",
    "Time Diff between first and last (Mins)": "time between the first and the last transaction (sent or received), minutes",
    "Sent tnx": "number of transactions sent, contract creations excluded",
    "Received Tnx": "number of transactions received",
    "Number of Created Contracts": "number of contract-creation transactions sent",
    "Unique Received From Addresses": "number of distinct senders this address received from",
    "Unique Sent To Addresses": "number of distinct recipients this address sent to",
    "min value received": "smallest ether value received",
    "max value received": "largest ether value received",
    "avg val received": "mean ether value received",
    "min val sent": "smallest ether value sent to a non-contract address",
    "max val sent": "largest ether value sent to a non-contract address",
    "avg val sent": "mean ether value sent to a non-contract address",
    "min value sent to contract": "smallest ether value sent to a contract",
    "max val sent to contract": "largest ether value sent to a contract",
    "avg value sent to contract": "mean ether value sent to a contract",
    "total transactions (including tnx to create contract": "Sent tnx + Received Tnx + Number of Created Contracts (exact in the data)",
    "total Ether sent": "sum of ether sent to non-contract addresses",
    "total ether received": "sum of ether received",
    "total ether sent contracts": "sum of ether sent to contracts",
    "total ether balance": "total ether received - total Ether sent - total ether sent contracts (gas ignored; matches the data to 2e-3 ether)",
    "Total ERC20 tnxs": "number of ERC20 token transfers",
    "ERC20 total Ether received": "sum of ERC20 token amounts received",
    "ERC20 total ether sent": "sum of ERC20 token amounts sent",
    "ERC20 total Ether sent contract": "sum of ERC20 token amounts sent to contracts",
    "ERC20 uniq sent addr": "distinct addresses ERC20 tokens were sent to",
    "ERC20 uniq rec addr": "distinct addresses ERC20 tokens were received from",
    "ERC20 uniq sent addr.1": "second 'uniq sent addr' column of the source (duplicate header, meaning unclear)",
    "ERC20 uniq rec contract addr": "distinct token contracts received from",
    "ERC20 avg time between sent tnx": "mean gap between ERC20 sends (constant 0 in the data)",
    "ERC20 avg time between rec tnx": "mean gap between ERC20 receipts (constant 0 in the data)",
    "ERC20 avg time between rec 2 tnx": "second receipt-gap column (constant 0 in the data)",
    "ERC20 avg time between contract tnx": "mean gap between ERC20 contract transfers (constant 0 in the data)",
    "ERC20 min val rec": "smallest ERC20 amount received",
    "ERC20 max val rec": "largest ERC20 amount received",
    "ERC20 avg val rec": "mean ERC20 amount received",
    "ERC20 min val sent": "smallest ERC20 amount sent",
    "ERC20 max val sent": "largest ERC20 amount sent",
    "ERC20 avg val sent": "mean ERC20 amount sent",
    "ERC20 min val sent contract": "smallest ERC20 amount sent to contracts (constant 0 in the data)",
    "ERC20 max val sent contract": "largest ERC20 amount sent to contracts (constant 0 in the data)",
    "ERC20 avg val sent contract": "mean ERC20 amount sent to contracts (constant 0 in the data)",
    "ERC20 uniq sent token name": "distinct token names sent",
    "ERC20 uniq rec token name": "distinct token names received",
}

#: Text columns of the source (token names); dropped by the loader.
TEXT_COLUMNS = ("ERC20 most sent token type", "ERC20_most_rec_token_type")
#: Bookkeeping columns of the source; not features.
ID_COLUMNS = ("Unnamed: 0", "Index", ADDRESS)

#: Features whose source columns are all empty in 829 rows (the "ERC20 block").
ERC20_FEATURES = tuple(name for name in FEATURES if name.startswith(("ERC20", "Total ERC20")))

#: Features computed from raw chain blocks by ``extract_features`` (same meaning as the dataset).
DERIVED_FROM_CHAIN = tuple(name for name in FEATURES if name not in ERC20_FEATURES)

#: Name of the optional indicator added by ``load_eth_fraud(missing_flag=True)``.
MISSING_FLAG = "ERC20 block empty"

#: Features holding ether amounts or other heavy-tailed magnitudes (values up to ~1e12 in the
#: data); :class:`chainfl.data.scaling.Scaler` applies signed log1p to these before standardising.
#: Every feature in this schema is a non-negative count, time or amount except the balance, and
#: all are heavy-tailed, so all of them are listed; the indicator flag is not.
HEAVY_TAILED = tuple(FEATURES)


def chain_computable(feature_names: Iterable[str]) -> tuple[list[str], list[str]]:
    """Pure: split ``feature_names`` into ``(computable, not_computable)``, each in the given order.

    ``computable`` are the names :func:`chainfl.data.features.extract_features` computes from a
    chain's blocks (:data:`DERIVED_FROM_CHAIN`, compared after :func:`canonical`: surrounding
    spaces do not matter); ``not_computable`` is everything else — the ERC20 features, the
    missing-block indicator (:data:`MISSING_FLAG`) and any column of a user's own data.
    """
    computable, not_computable = [], []
    for name in feature_names:
        (computable if canonical(name) in _DERIVED else not_computable).append(name)
    return computable, not_computable


def not_computable_message(not_computable: Iterable[str], n_features: int) -> str:
    """Pure: the sentence that names features a chain cannot give and the set to train on instead."""
    missing = list(not_computable)
    shown = ", ".join(repr(n) for n in missing[:5]) + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
    return (f"{len(missing)} of {n_features} features cannot be computed from a chain's blocks: "
            f"{shown}. A model that scores chain accounts must be trained on the chain-computable set "
            f"chainfl.data.schema.DERIVED_FROM_CHAIN ({len(DERIVED_FROM_CHAIN)} features: the columns "
            f"`chainfl data features` writes; with the eth_fraud data, keep only those columns)")


_DERIVED = frozenset(DERIVED_FROM_CHAIN)


def canonical(name: str) -> str:
    """The canonical spelling of a source column name (surrounding whitespace removed)."""
    return name.strip()
