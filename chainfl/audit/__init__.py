"""audit: rebuild a task's history from the registry's events and verify all of it.

    from chainfl.audit import audit_task
    report = audit_task(chain, registry, store, task_id)
    report.ok, report.violations, report.to_dict()

:mod:`~chainfl.audit.history` reads the events (chunked log queries), :mod:`~chainfl.audit.verify`
orchestrates the checks — :mod:`~chainfl.audit.blobs` (every blob against its digest),
:mod:`~chainfl.audit.chained` (the handoff chain), :mod:`~chainfl.audit.federated` (every round's
decision and aggregate recomputed), :mod:`~chainfl.audit.release` (final state, release, threshold
evidence) — and :mod:`~chainfl.audit.report` renders the result (terminal table, JSON, HTML).
Violations (protocol breaks) make ``report.ok`` False; findings (misbehaviour the protocol
handled: flags, rejections, skips, abandoned rounds) are listed per node and leave it ok.
:mod:`~chainfl.audit.detect` scores accounts of any chain with a task's verified release.
"""

from __future__ import annotations

from chainfl.audit.history import History, load_history
from chainfl.audit.verify import AuditReport, Finding, NodeSummary, Violation, verify_history

__all__ = ["audit_task", "AuditReport", "Violation", "Finding", "NodeSummary", "History", "load_history",
           "verify_history"]


def audit_task(chain, registry, store, task_id: int, *, from_block: int = 0, to_block: int | None = None,
               chunk: int = 2000, timeout: float = 10.0) -> AuditReport:
    """Audit task ``task_id`` of ``registry`` (a :class:`chainfl.chain.registry.Registry` on
    ``chain``) against ``store``. Never raises for a violation: they are in ``report.violations``
    (each names the round/seq, the node and the CID); raises :class:`chainfl.errors.AuditError`
    only when there is nothing to audit (no such task in the block range).

    ``timeout`` bounds each blob fetch (an IPFS daemon waits for absent blocks). The contract's
    current task view is compared with the replay when the history is read up to the latest block.
    """
    latest = int(chain.w3.eth.block_number)
    end = latest if to_block is None else min(int(to_block), latest)
    history = load_history(registry, task_id, from_block=from_block, to_block=end, chunk=chunk)
    live = registry.task(task_id) if end == latest else None
    return verify_history(history, store, live, timeout=timeout, chain_url=getattr(chain, "url", ""),
                          registry_address=registry.address)
