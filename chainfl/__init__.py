"""chainfl: train blockchain-anomaly detectors across data holders without moving the data.

The tree shows the parts (see ARCHITECTURE.md):
    chain/        Ethereum backends and the registry contract client
    storage/      content-addressed model store (embedded, IPFS daemon) and the model codec
    data/         dataset loaders, on-chain feature extraction, activity simulator, partitioning
    learning/     detector models, local training, evaluation, chained training
    aggregation/  pure aggregation rules, strategies, update screening, attacks
    agents/       node agents, coordinator and the in-process runner (wiring only)
    audit/        rebuilding and verifying the training history from chain events
    cli/          click commands, one module per noun
"""

__version__ = "0.1.0"
