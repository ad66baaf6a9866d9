"""The coordinator: creates a task, drives its rounds, aggregates, releases the final model.

Like the node agents it derives what to do from chain state and events each
:meth:`Coordinator.step`, so a restarted coordinator (``attach(task_id)``) carries on where the
chain is:

* **create** (:meth:`Coordinator.create_task`): registers the task's nodes and its own
  coordinator role when it is the registry's admin, stores the :class:`TaskSpec` (canonical JSON)
  and the initial model, and records both digests + CIDs with ``createTask``.
* **federated**: opens round r with a deadline (``spec.round_seconds`` after the latest block);
  once a quorum of updates is in (``spec.effective_quorum()``) or the deadline has passed, fetches
  every update by CID and verifies it against the digest in its ``UpdateSubmitted`` event, then
  screens and aggregates them with the task's :class:`~chainfl.aggregation.strategies.Strategy`
  (inputs sorted by update digest: bit-identical for any arrival order), flags each excluded update
  on chain with its reason (an update whose blob fails verification is flagged too), stores the
  aggregate and finalizes the round with the included nodes.
* **chained**: watches the turns; if the expected node makes no progress for ``turn_timeout``
  seconds, passes its turn to the next node (``skipTurn``).
* **end**: after the last round (federated) or ``rounds × nodes`` handoffs and the next node's
  final gate check (chained), it sums the nodes' signed validation-score histograms, picks the
  F1-maximising threshold (:mod:`chainfl.agents.threshold`), stores the **release** — the final
  weights re-encoded with the threshold, scaler, feature names and model config in the codec meta
  (see :mod:`chainfl.agents.modelio`) — and closes the task, recording the release digest + CID
  when the registry's ``closeTask`` takes them.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from chainfl.agents import modelio
from chainfl.agents.follower import EventFollower
from chainfl.agents.setup import fast_calls
from chainfl.agents.reports import histograms_for
from chainfl.agents.spec import TaskSpec
from chainfl.agents.threshold import merge_histograms, threshold_from_histogram
from chainfl.aggregation.strategies import Strategy, Update
from chainfl.chain.registry import Mode
from chainfl.errors import (AgentError, BlobNotFoundError, CodecError, ContractError, IntegrityError,
                            LearningError)
from chainfl.learning.models import flatten, unflatten

log = logging.getLogger(__name__)

COORDINATOR_GAS = 1_500_000


class Coordinator:
    """See the module docstring."""

    def __init__(self, registry, store, account, *, reports=None, turn_timeout: float = 120.0,
                 report_timeout: float = 60.0, fetch_timeout: float = 30.0, clock=time.monotonic):
        self.registry = registry
        self.chain = registry.chain
        self.store = store
        self.account = account
        self.address = account.address
        self.reports = reports
        self.turn_timeout = float(turn_timeout)
        self.report_timeout = float(report_timeout)
        self.fetch_timeout = fetch_timeout
        self.clock = clock
        fast_calls(self.chain)
        self.task_id: int | None = None
        self.spec: TaskSpec | None = None
        self.follower: EventFollower | None = None
        self.release = None                 # modelio.Stored of the release, once made
        self.threshold: float | None = None
        self.threshold_f1: float | None = None
        self.reported_nodes = 0
        self.round_log: dict[int, dict] = {}    # federated: round -> what happened
        self._progress = None               # (chain key, clock) for the chained turn watchdog
        self._finished_at = None

    def __repr__(self) -> str:
        return f"Coordinator({self.address}, task {self.task_id})"

    # -- creating / attaching ---------------------------------------------------------------
    def ensure_roles(self, nodes) -> None:
        """Register ``nodes`` and this account's coordinator role if missing (admin only)."""
        admin = self.registry.admin()
        missing = [n for n in nodes if not self.registry.node(n).member]
        needs_role = not self.registry.node(self.address).coordinator
        if (missing or needs_role) and admin.lower() != self.address.lower():
            raise AgentError(f"{self.address} is not the registry admin ({admin}); ask the admin to "
                             f"register {len(missing)} node(s) and grant this account the coordinator role")
        for n in missing:
            self.registry.add_node(n, self.account)
        if needs_role:
            self.registry.set_coordinator(self.address, True, self.account)

    def create_task(self, spec: TaskSpec, initial_state=None) -> int:
        """Store the spec and initial model, create the task on chain; returns its id."""
        self.ensure_roles(spec.nodes)
        config = modelio.put_blob(self.store, spec.to_bytes())
        state = initial_state if initial_state is not None else modelio.initial_state(spec)
        initial = modelio.put_model(self.store, state, {"kind": "initial", "seed": int(spec.seed)})
        start = self.chain.block_number()
        mode = Mode.CHAINED if spec.mode == "chained" else Mode.FEDERATED
        first = spec.nodes[0] if spec.mode == "chained" else None
        task_id = self.registry.create_task(config.digest, config.cid, mode, initial.digest, initial.cid,
                                            first, self.account)
        log.info("task %s created (%s, %s nodes, %s rounds, config %s)", task_id, spec.mode, len(spec.nodes),
                 spec.rounds, config.cid)
        self.attach(task_id, start_block=start)
        return task_id

    def attach(self, task_id: int, start_block: int = 0) -> None:
        """Drive an existing task (resume after a restart): history is read once from ``start_block``."""
        self.task_id = int(task_id)
        self.follower = EventFollower(self.registry, self.task_id, start_block=start_block)
        self.follower.catch_up()
        created = self.follower.history.created
        if created is None:
            raise AgentError(f"no TaskCreated event for task {task_id} at or after block {start_block}; "
                             f"pass the right --from-block (or 0)")
        task = self.registry.task(self.task_id)
        if task.coordinator.lower() != self.address.lower():
            raise AgentError(f"task {task_id} is coordinated by {task.coordinator}, not {self.address}")
        self.spec = modelio.load_spec(self.store, created["configCid"], created["configDigest"], self.fetch_timeout)

    # -- the loop ---------------------------------------------------------------------------
    def step(self) -> str:
        if self.follower is None:
            raise AgentError("create_task() or attach() first")
        self.follower.catch_up()
        task = self.registry.task(self.task_id)
        if task.closed:
            return "done"
        if task.mode == Mode.FEDERATED:
            return self._federated(task)
        return self._chained(task)

    def run(self, poll_interval: float = 0.5, timeout: float | None = None) -> None:
        start = time.monotonic()
        while self.step() != "done":
            if timeout is not None and time.monotonic() - start > timeout:
                raise AgentError(f"{self}: task not finished after {timeout:.0f} s")
            time.sleep(poll_interval)

    def _now(self) -> int:
        return max(self.chain.latest_timestamp(), int(time.time()))

    # -- federated --------------------------------------------------------------------------
    def _federated(self, task) -> str:
        spec = self.spec
        r = task.round
        if task.round_open:
            subs = self.follower.history.submissions.get(r, {})
            if len(subs) >= spec.effective_quorum() or (self._now() > task.deadline and subs):
                return self._finalize(task)
            if self._now() > task.deadline and not subs:
                log.warning("task %s round %s: deadline passed with no update; waiting for one",
                            self.task_id, r)
            return "waiting"
        if r < spec.rounds:
            deadline = self._now() + int(spec.round_seconds)
            try:
                opened = self.registry.open_round(self.task_id, deadline, self.account)
            except ContractError as e:
                log.info("%s: openRound reverted (%s); re-reading the chain", self, e.error_name)
                return "reverted"
            log.info("task %s: round %s opened (deadline %s)", self.task_id, opened, deadline)
            return "opened"
        return self._finish(task)

    def _finalize(self, task) -> str:
        spec = self.spec
        r = task.round
        hist = self.follower.history
        subs = hist.submissions.get(r, {})
        strategy = Strategy.from_spec(spec.strategy) if spec.strategy else Strategy(name="fedavg")
        global_state = self._load(task.head)
        reference = flatten(global_state)
        updates, broken = [], {}
        for node, ev in sorted(subs.items()):
            try:
                state, _ = modelio.load_model(self.store, ev["cid"], ev["digest"], spec, self.fetch_timeout)
            except (IntegrityError, CodecError, BlobNotFoundError) as e:
                broken[node] = f"blob failed verification: {type(e).__name__}"
                continue
            updates.append(Update(node=node, digest=ev["digest"], state_vec=flatten(state),
                                  n_samples=int(ev["samples"])))
        previous = None     # the global model of the round before (server momentum); None in round 1
        if strategy.server_momentum and r > 1:
            opened = hist.rounds.get(r - 1)
            if opened is None:
                raise AgentError(f"task {self.task_id} round {r}: the previous round's RoundOpened event was "
                                 f"not read (server momentum needs its global model); attach from an "
                                 f"earlier block (e.g. 0)")
            previous = flatten(self._load(opened["globalModel"]))
        try:
            result = strategy.aggregate(updates, reference=reference, previous=previous)
        except LearningError as e:
            raise AgentError(f"task {self.task_id} round {r}: cannot aggregate {len(updates)} update(s): {e}") from e
        to_flag = dict(broken)
        for node in result.flagged:
            to_flag[node] = _reason(result.scores.get(node, {}))
        already = hist.flags.get(r, {})
        for node, reason in sorted(to_flag.items()):
            if node in already:
                continue
            try:
                self.registry.flag_update(self.task_id, r, node, reason[:200], self.account)
            except ContractError as e:
                if e.error_name != "RegistryAlreadyFlagged":
                    raise
        state = unflatten(result.vector, global_state)
        stored = modelio.put_model(self.store, state, {"kind": "aggregate", "task": self.task_id, "round": int(r)})
        try:
            self.registry.finalize_round(self.task_id, r, stored.digest, stored.cid, result.included, self.account)
        except ContractError as e:
            log.info("%s: finalizeRound reverted (%s); re-reading the chain", self, e.error_name)
            return "reverted"
        losses = [ev["lossE6"] / 1e6 for ev in subs.values()]
        self.round_log[r] = {"round": r, "submitted": sorted(subs), "included": list(result.included),
                             "flagged": sorted(to_flag), "flag_reasons": to_flag,
                             "mean_loss": float(np.mean(losses)) if losses else None,
                             "model": stored.hex}
        log.info("task %s: round %s finalized: %s update(s), %s included, %s flagged", self.task_id, r,
                 len(subs), len(result.included), len(to_flag))
        return "finalized"

    # -- chained ----------------------------------------------------------------------------
    def _chained(self, task) -> str:
        spec = self.spec
        key = (task.expected, task.seq, task.head)
        if self._progress is None or self._progress[0] != key:
            self._progress = (key, self.clock())
        if task.seq >= spec.total_handoffs:
            checker = task.expected
            checked = self._has_report(checker, task.head)
            if checked or self.clock() - self._progress[1] > self.turn_timeout:
                return self._finish(task)
            return "waiting"
        if self.clock() - self._progress[1] > self.turn_timeout and task.expected is not None:
            nxt = spec.next_node(task.expected)
            try:
                self.registry.skip_turn(self.task_id, nxt, self.account)
            except ContractError as e:
                log.info("%s: skipTurn reverted (%s)", self, e.error_name)
                return "reverted"
            log.warning("task %s: %s made no progress for %.0f s; turn passed to %s", self.task_id,
                        task.expected, self.turn_timeout, nxt)
            self._progress = None
            return "skipped"
        return "waiting"

    def _has_report(self, node, digest: bytes) -> bool:
        if self.reports is None or node is None:
            return False
        return bool(histograms_for(self.reports.reports(self.task_id), self.task_id, [node], "0x" + digest.hex()))

    # -- the end: threshold, release, close -------------------------------------------------
    def _finish(self, task) -> str:
        spec = self.spec
        final_hex = "0x" + task.head.hex()
        hists = []
        if self.reports is not None:
            hists = histograms_for(self.reports.reports(self.task_id), self.task_id, spec.nodes, final_hex)
        if len(hists) < len(spec.nodes):
            if self._finished_at is None:
                self._finished_at = self.clock()
            if self.clock() - self._finished_at <= self.report_timeout and self.reports is not None:
                return "waiting"
            log.warning("task %s: %s of %s node(s) reported validation histograms; choosing the threshold "
                        "from those", self.task_id, len(hists), len(spec.nodes))
        if hists:
            self.threshold, self.threshold_f1 = threshold_from_histogram(merge_histograms(hists))
        else:
            self.threshold, self.threshold_f1 = 0.5, None
            log.warning("task %s: no validation histograms; release threshold defaults to 0.5", self.task_id)
        self.reported_nodes = len(hists)
        state = self._load(task.head)
        meta = {"kind": "release", "task": self.task_id, "source": final_hex, "threshold": self.threshold,
                "threshold_f1": self.threshold_f1, "reported_nodes": len(hists), "scaler": spec.scaler,
                "feature_names": list(spec.feature_names), "model": spec.model}
        self.release = modelio.put_model(self.store, state, meta)
        try:
            self._close(self.release)
        except ContractError as e:
            log.info("%s: closeTask reverted (%s)", self, e.error_name)
            return "reverted"
        log.info("task %s closed: release %s (threshold %.4f from %s node report(s))", self.task_id,
                 self.release.cid, self.threshold, len(hists))
        return "closed"

    def _close(self, release) -> None:
        """closeTask records the release's digest + CID in TaskClosed (the auditable end point)."""
        self.registry.close_task(self.task_id, release.digest, release.cid, self.account)

    def _load(self, digest: bytes):
        cid = self.follower.history.cid_of(digest)
        state, _ = modelio.load_model(self.store, cid, digest, self.spec, self.fetch_timeout)
        return state


def _reason(scores: dict) -> str:
    """A short flag reason from screening scores."""
    if not scores:
        return "excluded by screening"
    if scores.get("reasons"):
        return "screened out: " + "; ".join(str(r) for r in scores["reasons"])
    parts = []
    for k in sorted(scores):
        v = scores[k]
        if isinstance(v, float):
            parts.append(f"{k}={v:.3g}")
        elif isinstance(v, (int, str, bool)):
            parts.append(f"{k}={v}")
    return "screened out: " + ", ".join(parts)
