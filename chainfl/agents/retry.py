"""Riding out outages: retry a step with backoff while the chain or the store is unreachable.

An agent's or the coordinator's step reads the chain and the store and may send a transaction.
When the node or the IPFS daemon is briefly down (a restart, a network blip) the step raises
:class:`~chainfl.errors.ChainConnectionError` or :class:`~chainfl.errors.StoreUnavailableError`;
nothing was decided yet that the chain does not already say, because every step re-derives what
to do from chain state. :class:`Backoff` simply runs the step again — after 0.5 s, 1 s, 2 s …
(capped at ``cap`` seconds) — and gives up with a clear :class:`~chainfl.errors.AgentError` only
when the outage lasts longer than ``patience`` seconds. One warning is logged per outage and one
line when it is over, so a 30 s outage costs a few log lines and no work.
"""

from __future__ import annotations

import logging
import time

from chainfl.errors import AgentError, ChainConnectionError, StoreUnavailableError

log = logging.getLogger(__name__)

#: Errors that mean "try again later", not "this is wrong".
TRANSIENT = (ChainConnectionError, StoreUnavailableError)


class Backoff:
    """Run ``fn`` until it returns, retrying transient errors for up to ``patience`` seconds."""

    def __init__(self, who: str, patience: float = 300.0, first: float = 0.5, cap: float = 15.0,
                 clock=time.monotonic, sleep=time.sleep):
        self.who = who
        self.patience = float(patience)
        self.first = float(first)
        self.cap = float(cap)
        self.clock = clock
        self.sleep = sleep
        self.outages = 0              # outages ridden out so far (for logs and tests)

    def run(self, fn):
        started = None
        delay = self.first
        while True:
            try:
                result = fn()
            except TRANSIENT as e:
                now = self.clock()
                if started is None:
                    started = now
                    self.outages += 1
                    log.warning("%s: %s; retrying for up to %.0f s", self.who, e, self.patience)
                elif now - started > self.patience:
                    raise AgentError(f"{self.who}: still failing after {now - started:.0f} s ({e}); "
                                     f"start the node/daemon again and rerun this command — it resumes "
                                     f"from chain state") from e
                self.sleep(delay)
                delay = min(self.cap, delay * 2)
                continue
            if started is not None:
                log.warning("%s: reachable again after %.1f s", self.who, self.clock() - started)
            return result
