"""learning subsystem (see ARCHITECTURE.md): pure torch/numpy, never chain or storage.

* ``models``   ModelConfig, build_model, get_state/set_state, flatten/unflatten
* ``train``    TrainConfig, train_local -> LocalResult (deterministic by seed; pos_weight; FedProx)
* ``batched``  train_many: the same local training for many nodes at once (experiments)
* ``evaluate`` predict_scores, evaluate, choose_threshold (validation only), metrics_from_scores
* ``chained``  ValidationGate, run_chained (in-process chained training)
"""
