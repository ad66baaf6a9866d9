"""The coordinator: creates a task, drives its rounds or turns, decides, releases the final model.

Like the node agents it derives what to do from chain state and events each
:meth:`Coordinator.step`, so a restarted coordinator (``attach(task_id)``) carries on where the
chain is, and every decision it records is one transaction (nothing half-done survives a crash):

* **create** (:meth:`Coordinator.create_task`): registers the task's nodes and its own
  coordinator role when it is the registry's admin, stores the :class:`TaskSpec` (canonical JSON)
  and the initial model, and records both digests + CIDs and the task's node set with
  ``createTask`` (only those nodes may submit or be handed to).
* **federated**: opens round r with a deadline (``spec.round_seconds`` after the latest block).
  Once the quorum (``spec.effective_quorum()``) has submitted or the deadline has passed, it
  fetches every update by CID (verified against the digest on chain, capped at the task's blob
  size), waits up to ``spec.fetch_patience`` seconds of chain time for blobs that do not resolve,
  and calls :func:`chainfl.aggregation.decision.decide_round` — the same pure function the audit
  calls — for a verdict on every update (included, excluded by the rule, or flagged with a
  coded reason: invalid, unavailable, copy, samples, screening). It then stores the aggregate and
  records the whole decision with ``finalizeRound`` in one transaction — or, when no update is
  usable, ``abandonRound`` with the reason, and the next round starts from the same model.
  With peer validation (``spec.peer``) it first waits for every node's signed scores of the
  round's updates, at most ``peer.seconds`` of chain time after the round became ready to end,
  decides with them (:mod:`chainfl.agents.peerreports`) and names them as the decision's evidence.
  After ``spec.max_abandoned`` abandoned rounds in a row the task ends with what it has.
* **chained**: if the expected node makes no progress for ``spec.turn_seconds`` of chain time,
  passes its turn to the next node of the task — never to the producer of an unaccepted head,
  which the contract refuses too, so nobody accepts its own model.
* **end**: after ``spec.rounds`` finalized rounds (federated) or ``rounds × nodes`` handoffs and
  the next node's final check (chained), it sums the nodes' signed validation-score histograms,
  picks the F1-maximising threshold (:mod:`chainfl.agents.threshold`), stores the **release** —
  the final weights re-encoded with the threshold, scaler, feature names and model config in the
  codec meta (see :mod:`chainfl.agents.modelio`) — and closes the task with the release digest +
  CID and the reason it ends. A chained head that no node checked is not released: the last
  accepted model is.

Transient chain or store outages inside a step are ridden out by :meth:`run` with backoff
(:mod:`chainfl.agents.retry`).
"""

from __future__ import annotations

import logging
import time

import numpy as np

from chainfl.agents import modelio
from chainfl.agents.follower import EventFollower
from chainfl.agents.peerreports import evidence_blob as peer_evidence_blob, peer_inputs, peer_settings, \
    verified_peer_reports
from chainfl.agents.reports import evidence_blob, histograms_for, threshold_reports, verified_reports
from chainfl.agents.retry import Backoff
from chainfl.agents.setup import fast_calls
from chainfl.agents.spec import TaskSpec
from chainfl.agents.threshold import merge_histograms, threshold_from_histogram
from chainfl.aggregation.boosting import strategy_from_spec
from chainfl.aggregation.decision import Candidate, decide_round, reason_code
from chainfl.aggregation.strategies import Strategy
from chainfl.chain.registry import Mode, RoundDecision
from chainfl.errors import (AgentError, BlobNotFoundError, BlobTooLargeError, CodecError, ContractError,
                            IntegrityError)
from chainfl.learning.models import flatten, unflatten

log = logging.getLogger(__name__)


class Coordinator:
    """See the module docstring."""

    def __init__(self, registry, store, account, *, reports=None, report_timeout: float = 60.0,
                 fetch_timeout: float = 10.0, patience: float = 300.0):
        self.registry = registry
        self.chain = registry.chain
        self.store = store
        self.account = account
        self.address = account.address
        self.reports = reports
        self.report_timeout = float(report_timeout)
        self.fetch_timeout = fetch_timeout
        self.patience = float(patience)
        fast_calls(self.chain)
        self.task_id: int | None = None
        self.spec: TaskSpec | None = None
        self.follower: EventFollower | None = None
        self.release = None                 # modelio.Stored of the release, once made
        self.threshold: float | None = None
        self.threshold_f1: float | None = None
        self.reported_nodes = 0
        self.close_reason: str | None = None
        self.round_log: dict[int, dict] = {}    # federated: round -> what happened
        self._finished_at = None
        self._waiting_on: dict[int, set] = {}   # round -> nodes whose blobs are awaited (logged once)
        self._silence_logged: set[tuple[int, int]] = set()
        self._models: dict[bytes, object] = {}   # digest -> verified state (the last two loaded)
        self._stop: dict | None = None           # an early stop decided (kept while the release waits)
        self._report_cache: dict[str, tuple] = {}   # model hex -> (points entry, reports) once no more can come

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
        task_id = self.registry.create_task(config.digest, config.cid, mode, initial.digest, initial.cid,
                                            spec.nodes, self.account)
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
        if [a.lower() for a in created["nodes"]] != [a.lower() for a in self.spec.nodes]:
            raise AgentError(f"task {task_id}: the node set on chain differs from its spec's; this task was "
                             f"not created by chainfl's coordinator")

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
        """Step until the task is closed; chain/store outages are retried (``patience`` seconds)."""
        start = time.monotonic()
        backoff = Backoff(f"coordinator of task {self.task_id}", patience=self.patience)
        while backoff.run(self.step) != "done":
            if timeout is not None and time.monotonic() - start > timeout:
                raise AgentError(f"{self}: task not finished after {timeout:.0f} s")
            time.sleep(poll_interval)

    def _now(self) -> int:
        return max(self.chain.latest_timestamp(), int(time.time()))

    # -- federated --------------------------------------------------------------------------
    def _federated(self, task) -> str:
        spec, hist = self.spec, self.follower.history
        r = task.round
        if task.round_open:
            if len(hist.submissions.get(r, {})) < task.round_submissions:
                return "waiting"            # the view is ahead of the events read: poll again
            now = self._now()
            if task.round_submissions < spec.effective_quorum() and now <= task.deadline:
                self._log_silence(r, task, now)
                return "waiting"
            return self._end_round(task)
        done = len(hist.finalized)
        if done >= spec.rounds:
            return self._finish(task, f"{done} round(s) finalized as planned")
        if modelio.is_gbdt(spec) and done and self._ensemble_done(task.head):
            return self._finish(task, f"{done} round(s) finalized: every tree of the ensemble is grown")
        if spec.stopping and done:
            stop = self._early_stop(done)
            if stop is not None:
                return self._finish(task, stop["reason"], stopping=stop)
        streak = hist.abandoned_streak()
        if streak >= spec.max_abandoned:
            return self._finish(task, f"stopped after {done} finalized round(s): the last {streak} round(s) "
                                      f"ended without a usable update")
        deadline = self._now() + int(spec.round_seconds)
        try:
            opened = self.registry.open_round(self.task_id, deadline, self.account)
        except ContractError as e:
            log.info("%s: openRound reverted (%s); re-reading the chain", self, e.error_name)
            return "reverted"
        log.info("task %s: round %s opened (deadline %s)", self.task_id, opened, deadline)
        return "opened"

    def _early_stop(self, done: int) -> dict | None:
        """The stopping section of the evidence once the nodes' reports say stop (sticky), else None.

        Reads the models before the newest finalized one (its reports are still coming in, and
        liars can send theirs first). The decision that counts is the one re-made from exactly
        the evidence to be recorded (:func:`~chainfl.agents.stopping.check_evidence`, what the
        audit runs), so the audit cannot come to another verdict; evidence over the audit's cap
        means no stop."""
        from chainfl.agents.reports import REPORT_BYTES_CAP, evidence_blob, evidence_cap
        from chainfl.agents.stopping import StoppingRule, check_evidence, decide, robust_loss

        if self._stop is not None:
            return self._stop
        spec, hist = self.spec, self.follower.history
        if self.reports is None:
            return None
        rule = StoppingRule.from_dict(spec.stopping)
        finalized = sorted(hist.finalized)
        rounds = finalized[-3 * rule.window - 1:-1]
        points, used = [], {}
        for i, r in enumerate(rounds):
            hexd = "0x" + bytes(hist.finalized[r]["digest"]).hex()
            if hexd in self._report_cache:
                point, reports = self._report_cache[hexd]
            else:
                reports = verified_reports(self.reports.reports_for(self.task_id, hexd, spec.nodes), self.task_id,
                                           spec.nodes, hexd)
                point = (r, *robust_loss([x.histograms[hexd] for x in reports]))
                # nodes report on the newest global model only: once it is two models old (or every
                # node reported on it) no more reports on it are to come
                if len(reports) == len(spec.nodes) or i < len(rounds) - 1:
                    self._report_cache[hexd] = (point, reports)
            points.append(point)
            used[r] = (hexd, reports)
        keep = {used[r][0] for r in rounds}
        self._report_cache = {k: v for k, v in self._report_cache.items() if k in keep}
        decision = decide(rule, points, len(spec.nodes), done)
        if not decision.stop:
            return None
        evidence = {}
        for r in decision.rounds:
            for x in used[r][1]:
                evidence[(x.node.lower(), x.body())] = x
        section = {"rule": rule.to_dict(), "rounds": list(decision.rounds),
                   "models": [used[r][0] for r in decision.rounds], "reports": list(evidence.values())}
        models = {r: "0x" + bytes(hist.finalized[r]["digest"]).hex() for r in finalized}
        checked, problem = check_evidence(section, section["reports"], rule=rule, task_id=self.task_id,
                                          nodes=spec.nodes, finalized_models=models)
        if problem is not None:
            log.info("task %s: not stopping: %s", self.task_id, problem)
            return None
        size = len(evidence_blob(self.task_id, "0x" + "00" * 32, [], section))
        room = evidence_cap(spec) - REPORT_BYTES_CAP * len(spec.nodes)     # the threshold reports go in too
        if size > room:
            log.warning("task %s: not stopping: the stopping evidence would be %s bytes (at most %s)",
                        self.task_id, size, room)
            return None
        self._stop = {**section, "losses": list(checked.losses), "reason": checked.reason}
        log.info("task %s: %s", self.task_id, checked.reason)
        return self._stop

    def _ensemble_done(self, digest: bytes) -> bool:
        from chainfl.learning import gbdt

        return gbdt.phase(self._load(digest)) == "done"

    def _log_silence(self, r: int, task, now: int) -> None:
        """Say which nodes have not submitted, once at a quarter of the round time and once near
        its end (a node that crashed or went silent is visible while the round waits for it)."""
        opened = self.follower.history.rounds.get(r)
        if opened is None:
            return
        start = self.follower.block_time(opened["_block"])
        length = max(1, int(task.deadline) - start)
        for mark in (1, 3):
            if now - start >= mark * length / 4 and (r, mark) not in self._silence_logged:
                self._silence_logged.add((r, mark))
                got = {a.lower() for a in self.follower.history.submissions.get(r, {})}
                silent = [a for a in self.spec.nodes if a.lower() not in got]
                log.warning("task %s round %s: %s of %s node(s) have not submitted (%s); the round ends at "
                            "its deadline in %s s", self.task_id, r, len(silent), len(self.spec.nodes),
                            ", ".join(a[:10] for a in silent[:8]) + (" …" if len(silent) > 8 else ""),
                            max(0, int(task.deadline) - now))

    def _candidates(self, r: int, global_state) -> list[Candidate] | None:
        """Every submission of round ``r`` in chain order with its blob, or None while a blob that
        does not resolve is still within the task's fetch patience."""
        spec, hist = self.spec, self.follower.history
        now = self._now()
        out, pending = [], []
        for ev in hist.ordered_submissions(r):
            node, digest, cid = ev["node"], bytes(ev["digest"]), ev["cid"]
            try:
                state, meta = modelio.load_update(self.store, cid, digest, spec, global_state, self.fetch_timeout)
            except (IntegrityError, CodecError, BlobTooLargeError) as e:
                out.append(Candidate(node, digest, int(ev["samples"]),
                                     problem=f"invalid: blob failed verification ({type(e).__name__}: {e})"))
                continue
            except BlobNotFoundError:
                waited = now - self.follower.block_time(ev["_block"])
                if waited < spec.fetch_patience:
                    pending.append(node)
                    continue
                out.append(Candidate(node, digest, int(ev["samples"]),
                                     problem=f"unavailable: blob {cid} did not resolve within "
                                             f"{spec.fetch_patience} s"))
                continue
            out.append(Candidate(node, digest, int(ev["samples"]), vector=modelio.update_vector(spec, state), meta=meta))
        if pending:
            if set(pending) != self._waiting_on.get(r):
                self._waiting_on[r] = set(pending)
                log.warning("task %s round %s: waiting up to %s s for the update blob(s) of %s to resolve",
                            self.task_id, r, spec.fetch_patience, ", ".join(pending))
            return None
        return out

    def _end_round(self, task) -> str:
        spec, hist = self.spec, self.follower.history
        r = task.round
        global_state = self._load(task.head)
        candidates = self._candidates(r, global_state)
        if candidates is None:
            return "waiting"
        strategy = strategy_from_spec(spec.strategy) if spec.strategy else Strategy(name="fedavg")
        boosting = (modelio.boosting(spec), dict(global_state)) if modelio.is_gbdt(spec) else None
        previous = None     # the global model of the round before (server momentum); None in round 1
        if strategy.server_momentum and r > 1:
            opened = hist.rounds.get(r - 1)
            if opened is None:
                raise AgentError(f"task {self.task_id} round {r}: the previous round's RoundOpened event was "
                                 f"not read (server momentum needs its global model); attach from an "
                                 f"earlier block (e.g. 0)")
            previous = flatten(self._load(opened["globalModel"]))
        peer, evidence = None, None
        if peer_settings(spec) is not None:
            reports = self._peer_reports(task, candidates)
            if reports is None:
                return "waiting"
            peer = (peer_settings(spec)[0], peer_inputs(reports))
            evidence = modelio.put_blob(self.store, peer_evidence_blob(self.task_id, r, "0x" + bytes(task.head).hex(),
                                                                       spec.peer, reports))
        outcome = decide_round(candidates, strategy, task_id=self.task_id, round_=r,
                               reference=None if boosting else flatten(global_state), previous=previous,
                               committed=spec.node_samples, boosting=boosting, peer=peer)
        decision = RoundDecision(included=outcome.included, excluded=outcome.excluded, flagged=outcome.flagged,
                                 evidence_digest=evidence.digest if evidence else None,
                                 evidence_cid=evidence.cid if evidence else None)
        try:
            if outcome.abandoned:
                self.registry.abandon_round(self.task_id, r, decision, outcome.abandon_reason, self.account)
                stored = None
            else:
                new_state = modelio.ordered_state(spec, outcome.state) if boosting else \
                    unflatten(outcome.vector, global_state)
                stored = modelio.put_model(self.store, new_state,
                                           {"kind": "aggregate", "task": self.task_id, "round": int(r)})
                self.registry.finalize_round(self.task_id, r, stored.digest, stored.cid, decision, self.account)
        except ContractError as e:
            # e.g. RegistryDecisionCount: an update arrived after the events were read
            log.info("%s: ending round %s reverted (%s); re-reading the chain", self, r, e.error_name)
            return "reverted"
        losses = [ev["lossE6"] / 1e6 for ev in hist.ordered_submissions(r)]
        codes = sorted({reason_code(v) for v in outcome.flagged.values()})
        self.round_log[r] = {"round": r, "submitted": [c.node for c in candidates], "included": outcome.included,
                             "excluded": outcome.excluded, "flagged": sorted(outcome.flagged),
                             "flag_reasons": dict(outcome.flagged), "abandoned": outcome.abandon_reason,
                             "mean_loss": float(np.mean(losses)) if losses else None,
                             "peer_excluded": sorted(n for n, sc in outcome.scores.items() if str(
                                 sc.get("peer", {}).get("reason", "")).startswith("excluded")),
                             "model": stored.hex if stored else None}
        if outcome.abandoned:
            log.warning("task %s round %s abandoned: %s (%s update(s), %s flagged)", self.task_id, r,
                        outcome.abandon_reason, len(candidates), len(outcome.flagged))
            return "abandoned"
        quality = self._quality(task.head)
        self.round_log[r]["validation_f1_of_global"] = quality[0]
        log.info("task %s round %s: %s update(s), %s included, %s excluded, %s flagged%s, mean loss %s; "
                 "validation F1 of the round's global model %s", self.task_id, r, len(candidates),
                 len(outcome.included), len(outcome.excluded), len(outcome.flagged),
                 f" ({', '.join(codes)})" if codes else "", "n/a" if not losses else f"{np.mean(losses):.4f}",
                 "n/a (no node reports)" if quality[0] is None else
                 f"{quality[0]:.3f} ({quality[1]} of {len(spec.nodes)} node report(s))")
        return "finalized"

    def _peer_reports(self, task, candidates: list[Candidate]):
        """The verified peer reports of the round (see :mod:`chainfl.agents.peerreports`), once
        every node has scored every usable update but its own (a node without validation rows
        sends an empty report) or ``peer.seconds`` of chain time have passed since the round was
        ready to end and since its latest submission; None while waiting for more."""
        spec, hist = self.spec, self.follower.history
        r, base = task.round, "0x" + bytes(task.head).hex()
        if not any(c.vector is not None for c in candidates):
            return []                          # nothing to score: the round is abandoned without waiting
        got = self.reports.peer_reports(self.task_id, r, spec.nodes) if self.reports is not None else []
        reports = verified_peer_reports(got, spec, self.task_id, r, base)
        usable = {"0x" + bytes(c.digest).hex(): c.node.lower() for c in candidates if c.vector is not None}
        by_node = {x.node.lower(): x for x in reports}
        missing = [n for n in spec.nodes
                   if n.lower() not in by_node or (by_node[n.lower()].scores and
                                                   any(d not in by_node[n.lower()].scores and owner != n.lower()
                                                       for d, owner in usable.items()))]
        if not missing:
            return reports
        subs, q = hist.ordered_submissions(r), spec.effective_quorum()
        ready_at = self.follower.block_time(subs[q - 1]["_block"]) if len(subs) >= q else int(task.deadline)
        # every submission gets a full window from when it was mined: one sent late (after the
        # quorum, or just before a decision that then reverts) is scored like the others, not kept unscored
        ready_at = max([ready_at] + [self.follower.block_time(x["_block"]) for x in subs])
        seconds = peer_settings(spec)[1]
        if self._now() - ready_at <= seconds:
            if (r, "peer") not in self._silence_logged:
                self._silence_logged.add((r, "peer"))
                log.info("task %s round %s: waiting up to %s s for the peer scores of %s node(s)", self.task_id, r,
                         seconds, len(missing))
            return None
        log.warning("task %s round %s: deciding with the peer reports of %s of %s node(s) (%s s passed)", self.task_id,
                    r, len(spec.nodes) - len(missing), len(spec.nodes), seconds)
        return reports

    def _quality(self, digest: bytes) -> tuple[float | None, int]:
        """F1 at the best threshold of the merged validation histograms the nodes reported for
        model ``digest``, and how many nodes reported (no rows involved)."""
        if self.reports is None:
            return None, 0
        hexd = "0x" + bytes(digest).hex()
        nodes = self.spec.nodes
        hists = histograms_for(self.reports.reports_for(self.task_id, hexd, nodes), self.task_id, nodes, hexd)
        if not hists:
            return None, 0
        return threshold_from_histogram(merge_histograms(hists))[1], len(hists)

    # -- chained ----------------------------------------------------------------------------
    def _chained(self, task) -> str:
        spec, hist = self.spec, self.follower.history
        silent_for = self._now() - self.follower.block_time(hist.turn_block)
        if task.seq >= spec.total_handoffs:
            checker = task.expected
            if task.head == task.accepted or self._has_report(checker, task.head):
                return self._finish(task, f"{task.seq} handoff(s) recorded as planned")
            if silent_for <= spec.turn_seconds:
                return "waiting"
            final_skips = sum(1 for s in hist.skips if s["_block"] > hist.handoffs[-1]["_block"])
            if final_skips >= len(spec.nodes) - 2:      # every node but the producer was asked
                return self._finish(task, f"{task.seq} handoff(s) recorded; no node checked the final one "
                                          f"within {spec.turn_seconds} s each, so the last accepted model is "
                                          f"released")
        elif silent_for <= spec.turn_seconds or task.expected is None:
            return "waiting"
        nxt = self._next_turn(task)
        try:
            self.registry.skip_turn(self.task_id, nxt, self.account)
        except ContractError as e:
            log.info("%s: skipTurn reverted (%s)", self, e.error_name)
            return "reverted"
        log.warning("task %s: %s made no progress for %.0f s; turn passed to %s", self.task_id,
                    task.expected, silent_for, nxt)
        return "skipped"

    def _next_turn(self, task) -> str:
        """The node after the silent one in the task's order, skipping the producer of an
        unaccepted head (it must not check its own model)."""
        order = list(self.spec.nodes)
        lowered = [a.lower() for a in order]
        i = lowered.index(task.expected.lower()) if task.expected.lower() in lowered else -1
        for k in range(1, len(order) + 1):
            candidate = order[(i + k) % len(order)]
            if task.head != task.accepted and task.head_node and candidate.lower() == task.head_node.lower():
                continue
            return candidate
        return task.expected

    def _has_report(self, node, digest: bytes) -> bool:
        if self.reports is None or node is None:
            return False
        hexd = "0x" + digest.hex()
        # counted as the threshold will count it, so a head released on this check has the
        # checker's report in its evidence
        reports = self.reports.reports_for(self.task_id, hexd, self.spec.nodes)
        return any(r.node.lower() == node.lower() for r in threshold_reports(reports, self.task_id, self.spec, hexd))

    # -- the end: threshold, release, close -------------------------------------------------
    def _release_digest(self, task) -> bytes:
        """Federated: the current global model. Chained: the head if its checker accepted it (or
        it is accepted), else the last accepted model."""
        if task.mode == Mode.FEDERATED or task.head == task.accepted:
            return task.head
        return task.head if self._has_report(task.expected, task.head) else task.accepted

    def _finish(self, task, reason: str, stopping: dict | None = None) -> str:
        spec = self.spec
        final = self._release_digest(task)
        final_hex = "0x" + final.hex()
        used = []
        if self.reports is not None:
            used = threshold_reports(self.reports.reports_for(self.task_id, final_hex, spec.nodes), self.task_id, spec,
                                     final_hex)
        if len(used) < len(spec.nodes):
            if self._finished_at is None:
                self._finished_at = time.monotonic()
            if time.monotonic() - self._finished_at <= self.report_timeout and self.reports is not None:
                return "waiting"
            log.warning("task %s: %s of %s node(s) reported validation histograms; choosing the threshold "
                        "from those", self.task_id, len(used), len(spec.nodes))
        hists = [r.histograms[final_hex] for r in used]
        if hists:
            self.threshold, self.threshold_f1 = threshold_from_histogram(merge_histograms(hists))
        else:
            self.threshold, self.threshold_f1 = 0.5, None
            log.warning("task %s: no validation histograms; release threshold defaults to 0.5", self.task_id)
        self.reported_nodes = len(hists)
        state = self._load(final)
        meta = {"kind": "release", "task": self.task_id, "source": final_hex, "threshold": self.threshold,
                "threshold_f1": self.threshold_f1, "reported_nodes": len(hists), "scaler": spec.scaler,
                "feature_names": list(spec.feature_names), "model": spec.model}
        self.release = modelio.put_model(self.store, state, meta)
        evidence = modelio.put_blob(self.store, evidence_blob(self.task_id, final_hex, used, stopping)) \
            if (used or stopping) else None
        try:
            self.registry.close_task(self.task_id, self.release.digest, self.release.cid, self.account, reason,
                                     evidence_digest=evidence.digest if evidence else None,
                                     evidence_cid=evidence.cid if evidence else None)
        except ContractError as e:
            log.info("%s: closeTask reverted (%s)", self, e.error_name)
            return "reverted"
        self.close_reason = reason
        log.info("task %s closed (%s): release %s (threshold %.4f from %s node report(s))", self.task_id, reason,
                 self.release.cid, self.threshold, len(hists))
        return "closed"

    def _load(self, digest: bytes):
        """The verified model ``digest`` (the last two are kept: a round that waits for late blobs
        re-reads its global model every poll, and the round-opening check reads the head again)."""
        if digest in self._models:
            return self._models[digest]
        cid = self.follower.history.cid_of(digest)
        state, _ = modelio.load_model(self.store, cid, digest, self.spec, self.fetch_timeout)
        self._models = {**dict(list(self._models.items())[-1:]), digest: state}
        return state
