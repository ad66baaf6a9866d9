"""data subsystem (see ARCHITECTURE.md): datasets, chain features, simulator, partitions, scaling.

Heavier parts (feature extraction, simulator) are imported lazily so ``from chainfl.data import
load_eth_fraud`` does not pull in web3.
"""

from chainfl.data.datasets import Dataset, load_csv, load_eth_fraud
from chainfl.data.partition import SCHEMES, format_summary, partition, summary
from chainfl.data.scaling import FeatureStats, Scaler, signed_log1p

__all__ = ["Dataset", "load_eth_fraud", "load_csv", "partition", "summary", "format_summary",
           "SCHEMES", "Scaler", "FeatureStats", "signed_log1p",
           "extract_features", "FeatureResult", "FeatureState", "simulate", "Simulation", "SimConfig",
           "make_plan"]

_LAZY = {"extract_features": "features", "FeatureResult": "features", "FeatureState": "features",
         "simulate": "simulator", "Simulation": "simulator", "SimConfig": "simplan", "make_plan": "simplan"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"chainfl.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'chainfl.data' has no attribute {name!r}")
