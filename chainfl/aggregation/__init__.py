"""aggregation subsystem (see ARCHITECTURE.md): pure numpy, deterministic, order-independent.

* ``rules``       fedavg, mean, median, trimmed_mean, krum, multi_krum, clip_norm; RULES registry
* ``screening``   screen(updates, reference) -> ScreenResult (robust z-scores of norm/distance/cosine)
* ``strategies``  Strategy (policy, JSON spec), Update, AggregateResult, STRATEGIES, get_strategy
* ``attacks``     AttackConfig, choose_malicious, poison_labels, poison_update (label_flip, scale_delta, sign_flip, gaussian_noise, free_rider)
"""
