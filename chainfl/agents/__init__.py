"""agents subsystem (see ARCHITECTURE.md): wiring of chain, store, data and learning.

    spec.py         TaskSpec: what a task is (canonical JSON, recorded on chain by digest + CID)
    follower.py     EventFollower: a task's registry events from a cursor, in bounded block ranges
    modelio.py      models/specs through the store, verified against the digests on chain
    node.py         NodeAgent + LocalData: one account, its own data, acting when it is its turn
    coordinator.py  Coordinator: creates the task, drives rounds/turns, aggregates, releases, closes
    threshold.py    decision threshold from per-class score histograms (no pooled data)
    reports.py      signed histogram reports from nodes (in memory or a shared directory)
    setup.py        registry lookup/deploy, TaskSpec from node statistics, signers
    runner.py       run_job(RunConfig): the in-process job behind ``chainfl run``
    rundir.py       the run directory: config, metrics, plots

Modules are imported on use (``from chainfl.agents.node import NodeAgent``): the runner pulls in
torch, web3 and the simulator.
"""
