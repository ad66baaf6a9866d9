import pytest

from chainfl.agents.spec import TaskSpec
from chainfl.errors import ConfigError

NODES = ("0x00000000000000000000000000000000000000A1", "0x00000000000000000000000000000000000000b2",
         "0x00000000000000000000000000000000000000C3")


def test_round_trip_is_byte_identical_and_digest_stable():
    spec = TaskSpec(mode="federated", nodes=NODES, rounds=3, model={"kind": "mlp", "hidden": [8]},
                    strategy={"name": "fedavg"}, seed=7)
    blob = spec.to_bytes()
    again = TaskSpec.from_bytes(blob)
    assert again == spec
    assert again.to_bytes() == blob
    assert spec.digest() == TaskSpec.from_bytes(blob).digest()
    assert b" " not in blob  # canonical: compact separators


def test_chained_schedule_wraps_and_ignores_case():
    spec = TaskSpec(mode="chained", nodes=NODES, rounds=2)
    assert spec.next_node(NODES[0].lower()) == NODES[1]
    assert spec.next_node(NODES[2]) == NODES[0]
    assert spec.total_handoffs == 6


@pytest.mark.parametrize("kwargs, message", [
    (dict(mode="gossip", nodes=NODES, rounds=1), "unknown mode"),
    (dict(mode="chained", nodes=(), rounds=1), "at least one node"),
    (dict(mode="chained", nodes=(NODES[0], NODES[0].lower()), rounds=1), "duplicates"),
    (dict(mode="chained", nodes=NODES, rounds=0), "rounds must be"),
])
def test_invalid_specs_are_rejected_with_a_reason(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TaskSpec(**kwargs)


def test_bad_bytes_name_the_problem():
    with pytest.raises(ConfigError, match="not valid UTF-8 JSON"):
        TaskSpec.from_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="version"):
        TaskSpec.from_bytes(b'{"version": 99}')
    good = TaskSpec(mode="chained", nodes=NODES, rounds=1).to_dict()
    good["extra"] = 1
    from chainfl.agents.spec import canonical_json
    with pytest.raises(ConfigError, match="unknown fields: extra"):
        TaskSpec.from_bytes(canonical_json(good))


def test_a_configured_strategy_is_recorded_whole_and_rebuilt_by_the_coordinator_side():
    from dataclasses import replace

    import numpy as np

    from chainfl.agents.setup import build_spec
    from chainfl.aggregation.strategies import NEIGHBOUR_SCREEN, Strategy, get_strategy
    from chainfl.data.scaling import FeatureStats

    stats = [FeatureStats.compute(np.arange(12, dtype=np.float32).reshape(4, 3), ("a", "b", "c"))]
    wider = get_strategy("screened-fedavg", screening=replace(NEIGHBOUR_SCREEN, max_flag_frac=0.4))
    spec = build_spec(mode="federated", nodes=NODES, rounds=2, stats=stats, strategy=wider)
    rebuilt = Strategy.from_spec(TaskSpec.from_bytes(spec.to_bytes()).strategy)
    assert rebuilt == wider and rebuilt.screening.max_flag_frac == 0.4
    by_name = build_spec(mode="federated", nodes=NODES, rounds=2, stats=stats, strategy="screened-fedavg")
    assert Strategy.from_spec(by_name.strategy).screening.max_flag_frac == 0.2
