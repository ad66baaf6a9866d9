"""Finding (or deploying) the registry, and building a task spec from settings + node statistics.

Wiring helpers shared by the runner and the separate-process commands.
"""

from __future__ import annotations

import logging

from chainfl.agents.spec import TaskSpec
from chainfl.agents.stopping import StoppingRule
from chainfl.aggregation.strategies import Strategy, get_strategy
from chainfl.chain.registry import Registry
from chainfl.data.scaling import FeatureStats, Scaler
from chainfl.errors import ConfigError, DeploymentError
from chainfl.learning.chained import ValidationGate
from chainfl.learning.models import ModelConfig
from chainfl.learning.train import TrainConfig

log = logging.getLogger(__name__)


def fast_calls(chain) -> None:
    """Give ``eth_call`` a ``from`` address. Without one, web3's eth-tester middleware asks the
    chain for its account list on every view call (3 extra requests): a registry view took 0.20 s
    instead of 0.055 s on the embedded chain (measured). Views of the registry do not depend on the
    caller; transactions always set their own sender."""
    from web3._utils.empty import empty

    if chain.w3.eth.default_account is empty or not chain.w3.eth.default_account:
        chain.w3.eth.default_account = chain.accounts[0].address


def recorded_registry(chain) -> str | None:
    """The registry address recorded for ``chain`` by ``chainfl deploy`` (None if none/unknown)."""
    try:
        from chainfl.chain import deployments
    except ImportError:
        return None
    for name in ("registry_address", "lookup", "load_address", "find", "get"):
        fn = getattr(deployments, name, None)
        if callable(fn):
            try:
                address = fn(chain)
            except DeploymentError:
                return None
            except TypeError:
                continue
            if address:
                return str(getattr(address, "address", address))
    return None


def _record(chain, address: str) -> None:
    try:
        from chainfl.chain import deployments
    except ImportError:
        return
    for name in ("record", "save", "record_registry"):
        fn = getattr(deployments, name, None)
        if callable(fn):
            try:
                fn(chain, address)
                return
            except TypeError:
                continue


def open_registry(chain, address: str | None = None, *, deploy: bool = False, admin=None) -> Registry:
    """The registry at ``address``, else the recorded one, else (``deploy=True``) a new one
    deployed from ``admin`` (default dev account 0) and recorded."""
    address = address or recorded_registry(chain)
    if address:
        try:
            return Registry.at(chain, address)
        except DeploymentError:
            if not deploy:
                raise
            log.warning("the recorded registry %s is gone (chain reset?); deploying a new one", address)
    if not deploy:
        raise ConfigError("no registry address: pass --registry ADDRESS (or set CHAINFL_REGISTRY), or "
                          "deploy one with `chainfl deploy`")
    registry = Registry.deploy(chain, admin or chain.accounts[0])
    _record(chain, registry.address)
    log.info("deployed a registry at %s on %s", registry.address, chain.url)
    return registry


#: A federated network task without --rounds: at most this many rounds, stopped early when the
#: nodes' validation reports stop improving (chainfl.agents.stopping).
DEFAULT_NETWORK_ROUNDS = 100

#: The default federated gbdt (measured in benchmarks/results/models_offline.md and
#: benchmarks/results/default_run.md): depth 4, learning rate 0.3, 4 trees grown at once
#: (staggered), 32 quantile bins from the merged grid counts; 116 trees = 120 rounds (bins round
#: included). Pooled == federated at any partition. On the default job's own split (10 seeds,
#: benchmarks/results/gbdt_rounds.md) 116 trees give F1 0.921 (min 0.908), 76 trees 0.917 (min 0.898).
DEFAULT_GBDT = dict(n_trees=116, depth=4, learning_rate=0.3, concurrent_trees=4)


def model_for(mode: str, strategy: str, stats=None) -> str:
    """``--model auto``: gbdt for federated tasks (it matches pooled boosted trees) unless the
    strategy is a weight-averaging rule only networks have (krum, median, ...), then the MLP;
    newton for chained tasks (pooled Newton pass by pass) — the MLP when node statistics are given
    and some carry no grid counts (``node stats`` without ``--bins``)."""
    from chainfl.aggregation.boosting import BOOSTING_STRATEGIES, FROM_NETWORK

    if mode == "federated":
        return "gbdt" if (strategy in FROM_NETWORK or strategy in BOOSTING_STRATEGIES) else "mlp"
    if stats is not None and any(getattr(s, "grid", None) is None for s in stats):
        log.info("chained task: the node statistics carry no grid counts (node stats --bins), so --model auto "
                 "trains the mlp, not newton")
        return "mlp"
    return "newton"


def gbdt_config(n_features: int, node_rows=(), rounds: int | None = None, **settings):
    """The :class:`~chainfl.learning.gbdt.GBDTConfig` of a task: :data:`DEFAULT_GBDT` with
    ``settings`` on top, as many trees as fit in ``rounds`` when given (bins round included), and
    fixed-point bits lowered when a node holds more rows than 10 bits keep exact in float32."""
    from dataclasses import replace as _replace

    from chainfl.learning.gbdt import GBDTConfig

    cfg = GBDTConfig(n_features=int(n_features), **{**DEFAULT_GBDT, **settings})
    biggest = max([int(n) for n in node_rows] or [0])
    while biggest > cfg.max_rows_per_node and cfg.grad_bits > 4:
        cfg = _replace(cfg, grad_bits=cfg.grad_bits - 1)
    if biggest > cfg.max_rows_per_node:
        raise ConfigError(f"a node commits {biggest} training rows; the federated gbdt keeps its sums exact "
                          f"for at most {cfg.max_rows_per_node} rows per node: split that node's data over "
                          f"several node accounts, or train --model mlp")
    if rounds is not None:
        from chainfl.learning.gbdt import with_rounds_budget

        if int(rounds) < 2:
            raise ConfigError("a gbdt task needs at least 2 rounds (the bins round and one tree level); "
                              f"got --rounds {rounds}")
        if int(rounds) < 1 + cfg.depth:      # shallower trees, so that one fits
            depth = int(rounds) - 1
            cfg = _replace(cfg, depth=depth, concurrent_trees=min(cfg.concurrent_trees, depth))
        cfg = with_rounds_budget(cfg, int(rounds))
    return cfg


#: The chained newton model: bins per feature, and passes when --rounds is not given (measured in
#: benchmarks/results/chained_newton.md: F1 0.916 +- 0.005 after 5 passes on eth_fraud, any partition).
NEWTON_BINS = 16
NEWTON_PASSES = 5


def newton_config(stats: list[FeatureStats], max_bins: int = NEWTON_BINS, l2: float = 1.0):
    """The :class:`~chainfl.learning.newton.NewtonConfig` agreed from the nodes' grid counts."""
    from chainfl.learning.encoding import BinConfig
    from chainfl.learning.newton import NewtonConfig

    missing = [i for i, s in enumerate(stats) if s.grid is None]
    if missing:
        raise ConfigError(f"{len(missing)} of {len(stats)} node statistics carry no grid counts (first: #{missing[0]}); "
                          f"the newton model cuts its bins from them: each node reruns `chainfl node stats --bins`")
    merged = FeatureStats.merge(stats)
    return NewtonConfig.from_counts(merged.grid_counts(), len(merged.feature_names),
                                    BinConfig(max_bins=int(max_bins)), l2=float(l2))


def stopping_settings(patience: int | None) -> dict | None:
    """``--stop-patience``: None = the default (:func:`build_spec` decides), 0 = off, N = stop
    after N rounds without improvement (the rule's other settings at their defaults)."""
    if patience is None:
        return None
    if patience < 0:
        raise ConfigError(f"--stop-patience must be >= 0 (0 = off), got {patience}")
    return {} if patience == 0 else {"patience": int(patience)}


def build_spec(*, mode: str, nodes, rounds: int | None, stats: list[FeatureStats], hidden=(32, 16),
               model_kind: str = "mlp", epochs: int = 1, batch_size: int = 32, lr: float = 1e-2,
               strategy: str | Strategy = "fedavg", gate: bool = True, seed: int = 0,
               round_seconds: int = 600, quorum: int = 0, turn_seconds: int = 120, fetch_patience: int = 60,
               max_abandoned: int = 3, node_samples: dict | None = None, limits: dict | None = None,
               gbdt: dict | None = None, stopping: dict | None = None, newton: dict | None = None,
               peer: dict | None = None) -> TaskSpec:
    """A :class:`TaskSpec` whose scaler is agreed from the nodes' aggregate statistics only.

    ``strategy`` is a name from ``STRATEGIES`` or a configured :class:`Strategy` (e.g. screening
    with another flag cap); its full spec is recorded, so the coordinator and auditors use exactly it.
    ``node_samples`` (node -> committed training rows) defaults to the statistics' row counts when
    there is one statistics file per node, in the node order. The blob cap (``limits``) defaults
    to what the model's tensors need (:func:`chainfl.agents.modelio.blob_cap`).

    ``model_kind="gbdt"`` (federated only): the trees of :func:`gbdt_config` (``gbdt``: settings
    over :data:`DEFAULT_GBDT`); ``rounds`` None = as many rounds as its trees need, else as many
    trees as fit; ``strategy`` a boosting strategy (``screened-sum``, ``sum``; the network names
    ``screened-fedavg`` / ``fedavg`` map to them). Networks: ``rounds`` None = 3 passes in
    chained mode; federated: :data:`DEFAULT_NETWORK_ROUNDS` rounds, stopped early on the
    nodes' validation reports (:mod:`chainfl.agents.stopping`) unless ``stopping`` is ``{}``.

    ``model_kind="newton"`` (chained only): the PLE logistic regression fitted by one Newton step
    per pass (:mod:`chainfl.learning.newton`), its bins cut from the nodes' merged grid counts
    (statistics made with ``with_grid`` / ``node stats --bins``); ``newton``: ``max_bins``
    (default :data:`NEWTON_BINS`) and ``l2``; ``rounds`` None = :data:`NEWTON_PASSES` passes. Its
    handoff check is the model's own (:func:`chainfl.learning.newton.check_handoff`), so
    ``gate`` does not apply.

    ``stopping``: early-stopping settings (:class:`~chainfl.agents.stopping.StoppingRule` fields
    over its defaults); ``{}`` = off; None = on exactly when a federated network task's
    ``rounds`` is None (given rounds are run; a gbdt task runs its trees).

    ``peer``: peer validation of each round's updates (federated mlp/logreg;
    :func:`chainfl.agents.peerreports.peer_spec` settings, ``{}`` for its defaults); None = off.

    Features that ``detect`` cannot compute from a chain are recorded (``chain_features`` is the
    computable subset) and named in a warning.
    """
    from dataclasses import replace

    from chainfl.agents.modelio import blob_cap

    if not stats:
        raise ConfigError("no node statistics: each node runs `chainfl node stats` and the coordinator "
                          "gets the files with --stats")
    from chainfl.aggregation.boosting import BoostingStrategy, get_boosting_strategy
    from chainfl.data.schema import chain_computable, not_computable_message

    nodes = tuple(nodes)
    scaler = Scaler.federated(stats)
    if mode not in ("chained", "federated"):
        raise ConfigError(f"unknown mode {mode!r}; use chained or federated")
    if node_samples is None:
        node_samples = {n: int(s.count) for n, s in zip(nodes, stats)} if len(stats) == len(nodes) else {}
    boosting = None
    fitting = None
    if model_kind == "newton":
        if mode != "chained":
            raise ConfigError("the newton model takes one Newton step per pass along the chain: use --mode "
                              "chained (federated mode trains --model gbdt)")
        fitting = newton_config(stats, **dict(newton or {}))
        if rounds is None:
            rounds = NEWTON_PASSES
    if model_kind == "gbdt":
        if mode != "federated":
            raise ConfigError("gbdt grows its trees from the summed histograms of federated rounds: use "
                              "--mode federated, or --model mlp for chained mode")
        rows = list(node_samples.values()) or [int(s.count) for s in stats]
        boosting = gbdt_config(len(scaler.feature_names), rows, rounds, **dict(gbdt or {}))
        rounds = boosting.rounds()
    if stopping is None:     # on when the user left the rounds to the model (networks only)
        stopping = StoppingRule().to_dict() if (rounds is None and boosting is None
                                                and mode == "federated") else {}
    elif stopping:
        stopping = StoppingRule.from_dict({**StoppingRule().to_dict(), **dict(stopping)}).to_dict()
    if rounds is None:
        rounds = DEFAULT_NETWORK_ROUNDS if mode == "federated" else 3
    if mode == "federated":
        if boosting is not None:
            chosen = strategy if isinstance(strategy, BoostingStrategy) else get_boosting_strategy(
                strategy.name if isinstance(strategy, Strategy) else strategy)
        else:
            if isinstance(strategy, BoostingStrategy):
                raise ConfigError(f"strategy {strategy.name!r} sums gbdt histograms; a {model_kind} task "
                                  f"averages weights (e.g. screened-fedavg)")
            chosen = strategy if isinstance(strategy, Strategy) else get_strategy(strategy)
        strategy_spec = chosen.spec()
    else:
        strategy_spec = {}
    model = ModelConfig(kind=model_kind, hidden=tuple(hidden),
                        gbdt=None if boosting is None else boosting.to_dict(),
                        newton=None if fitting is None else fitting.to_dict())
    computable, not_computable = chain_computable(scaler.feature_names)
    if not_computable:
        log.warning("this task's model cannot score chain accounts with `chainfl detect --rpc`: %s",
                    not_computable_message(not_computable, len(scaler.feature_names)))
    train = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr)
    spec = TaskSpec(mode=mode, nodes=nodes, rounds=rounds, model=model.to_dict(), train=train.to_dict(),
                    feature_names=tuple(scaler.feature_names), scaler=scaler.to_dict(),
                    strategy=strategy_spec,
                    gate=ValidationGate().to_dict() if (gate and mode == "chained" and fitting is None) else {},
                    round_seconds=round_seconds, quorum=quorum, seed=seed, node_samples=dict(node_samples),
                    turn_seconds=turn_seconds, fetch_patience=fetch_patience, max_abandoned=max_abandoned,
                    limits=dict(limits or {}), chain_features=tuple(computable), stopping=dict(stopping),
                    peer=_peer_field(peer))
    if "max_blob_bytes" not in spec.limits:
        spec = replace(spec, limits={**spec.limits, "max_blob_bytes": blob_cap(spec)})
    from chainfl.agents.reports import REPORT_ROWS

    spec = replace(spec, limits={**spec.limits, REPORT_ROWS: "committed"})
    return spec


def _peer_field(peer: dict | None) -> dict:
    from chainfl.agents.peerreports import peer_spec

    return peer_spec(peer)


def sign_stats(stats: FeatureStats, account) -> dict:
    """``stats`` as JSON, naming the node that computed them and signed by its key (EIP-191 over
    the canonical JSON of the statistics): the row count in it is what the node commits to, and
    what caps the sample counts it may claim later (recorded in the task spec)."""
    from eth_account.messages import encode_defunct

    from chainfl.agents.spec import canonical_json

    body = stats.to_dict()
    signature = account.sign_message(encode_defunct(canonical_json(body))).signature
    return {**body, "node": account.address, "signature": "0x" + bytes(signature).hex()}


def read_stats(d: dict) -> tuple[FeatureStats, str | None]:
    """``(stats, node)`` from a stats JSON; ``node`` is None for unsigned statistics and the
    signer's address for signed ones (ConfigError if the signature is not the named node's)."""
    from eth_account import Account
    from eth_account.messages import encode_defunct
    from eth_utils import to_checksum_address

    from chainfl.agents.spec import canonical_json

    body = {k: v for k, v in d.items() if k not in ("node", "signature")}
    stats = FeatureStats.from_dict(body)
    if "node" not in d:
        return stats, None
    try:
        signer = Account.recover_message(encode_defunct(canonical_json(stats.to_dict())), signature=d["signature"])
    except Exception as e:   # malformed signature bytes
        raise ConfigError(f"the statistics of {d.get('node')} carry an unreadable signature ({e}); "
                          f"recompute them with `chainfl node stats --account/--keystore`") from e
    if signer.lower() != str(d["node"]).lower():
        raise ConfigError(f"the statistics naming {d['node']} are signed by {signer}: they were changed or "
                          f"not made by that node; recompute them with `chainfl node stats`")
    return stats, to_checksum_address(d["node"])


def stats_for_nodes(entries: list[tuple[FeatureStats, str | None]], nodes) -> list[FeatureStats]:
    """The statistics in the order of ``nodes``: signed ones matched by their node, unsigned ones
    taken in the order given (one per node)."""
    nodes = list(nodes)
    signed = [n for _, n in entries if n is not None]
    if signed and len(signed) != len(entries):
        raise ConfigError("some statistics are signed by their node and some are not; sign all of them "
                          "(`chainfl node stats --account I` / `--keystore FILE`) or none")
    if len(entries) != len(nodes):
        raise ConfigError(f"{len(entries)} statistics file(s) for {len(nodes)} node(s); pass one --stats per node")
    if not signed:
        log.warning("the statistics are not signed: their row counts are matched to the nodes in the order given "
                    "and cap each node's claimed samples; sign them with `chainfl node stats --account I`")
        return [s for s, _ in entries]
    by_node = {n.lower(): s for s, n in entries}
    if len(by_node) != len(entries):
        raise ConfigError("two statistics files are signed by the same node")
    missing = [n for n in nodes if n.lower() not in by_node]
    extra = sorted(set(by_node) - {n.lower() for n in nodes})
    if missing or extra:
        raise ConfigError(f"the statistics do not match the nodes: missing for {missing}, from non-nodes {extra}")
    return [by_node[n.lower()] for n in nodes]


def load_signer(chain, account: int | None = None, keystore: str | None = None, password: str | None = None):
    """The signing account: dev account ``account`` (from ganache.env's mnemonic) or an encrypted
    keystore (real networks). The key never leaves the LocalAccount; nothing here logs it."""
    if keystore:
        from chainfl.chain.accounts import load_keystore

        if password is None:
            raise ConfigError("a keystore needs its password (prompt, or CHAINFL_KEYSTORE_PASSWORD)")
        return load_keystore(keystore, password)
    if account is None:
        raise ConfigError("pass --account I (a dev account from ganache.env's mnemonic) or --keystore FILE")
    return chain.account(int(account))


def resolve_nodes(chain, nodes: str) -> list[str]:
    """``"5"`` -> dev accounts 1..5; ``"0xA,0xB"`` -> those addresses (checksummed)."""
    from eth_utils import is_address, to_checksum_address

    text = str(nodes).strip()
    if text.isdigit():
        n = int(text)
        if n < 1:
            raise ConfigError("--nodes must be >= 1")
        return [chain.account(i).address for i in range(1, n + 1)]
    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if not is_address(part):
            raise ConfigError(f"--nodes: {part!r} is not an address; give a count or comma-separated addresses")
        out.append(to_checksum_address(part))
    if not out:
        raise ConfigError("--nodes is empty")
    return out
