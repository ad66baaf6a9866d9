"""The node agent: one account, its own data, acting on chain when it is its turn.

A :class:`NodeAgent` never trusts its own memory for what to do: each :meth:`NodeAgent.step`
reads new registry events (bounded, from a cursor) and the task's state on chain, and derives the
one thing left to do from them:

* **chained** — when ``task.expected`` is this node: if the head is a model not yet accepted, fetch
  it by CID (from the ``HandoffRecorded`` event), verify it against the digest on chain (and the
  task's blob size cap), check that its meta names its producer, this task and that step (a copy
  of someone else's model does not) and that it claims no more rows than the producer committed,
  and score it against the last accepted model with the task's validation gate on this node's
  validation slice; a model that is clearly worse, fails any check, or whose blob does not
  resolve within ``spec.fetch_patience`` seconds of chain time after its handoff, is rejected on
  chain with the reason (``rejectHandoff``), and training starts from the last accepted model —
  a node never trains on a head it has not verified. Then train on the local data, store the
  result, and record the handoff to the next node.
* **federated** — when a round is open, its deadline not passed, and this node has not submitted
  to it: fetch and verify the round's global model, train, store, submit. The decision is taken
  from the events already read (``TaskHistory.federated_state``, tested equal to the chain's
  ``task`` view; ``UpdateSubmitted``); the task state and ``hasSubmitted`` are re-read on chain
  right before sending.
* **end** — once training is over (chained: ``rounds × nodes`` handoffs; federated: the last round
  finalized) it sends the coordinator a signed histogram of its validation scores per class
  (:mod:`chainfl.agents.reports`) for the candidate final model(s).

Agents in one process (``chainfl run``) share one :class:`EventFollower` (``follower=``): agents
decide from the history it keeps, so one poll per block serves all of them, and a round's events are
read once instead of once per agent (n agents each reading every submission was ~n^2 log reads).
Agents in separate processes each follow the chain themselves.

Outages: :meth:`NodeAgent.run` retries a step that fails because the chain or the store is
unreachable, with backoff, for up to ``patience`` seconds (:mod:`chainfl.agents.retry`).

Crash safety: the chain state is re-read right before every transaction, so an agent restarted
after a crash (even between storing a result and submitting it) redoes only what the chain lacks;
training is deterministic (seed from the task seed, the node's index and the step), so the redone
result has the same bytes and CID. Reverts that mean "someone else moved first" (not your turn,
stale parent, round closed, deadline passed, already submitted) are caught as the typed
:class:`~chainfl.errors.ContractError`, logged, and the agent carries on.

The gate's step-size reference is recomputed from chain state too: the step sizes of the last
``STEP_WINDOW`` accepted handoffs (a handoff is accepted once a later one names it as parent),
from their verified blobs, so every node — and a restarted one — judges against the same history.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace

import numpy as np

from chainfl.agents import modelio
from chainfl.agents.follower import EventFollower
from chainfl.agents.setup import fast_calls
from chainfl.agents.reports import NodeReport
from chainfl.agents.retry import Backoff
from chainfl.agents.threshold import score_histogram
from chainfl.aggregation.attacks import PROTOCOL_ATTACKS, AttackConfig, poison_labels, poison_update
from chainfl.chain.registry import Mode
from chainfl.data.scaling import FeatureStats
from chainfl.errors import (AgentError, BlobNotFoundError, BlobTooLargeError, CodecError, ConfigError,
                            ContractError, IntegrityError, LearningError)
from chainfl.learning.chained import ValidationGate
from chainfl.learning.evaluate import predict_scores
from chainfl.learning.models import flatten, unflatten
from chainfl.learning.train import train_local
from chainfl.storage.cid import compute_cid
from chainfl.storage.codec import digest as blob_digest, encode_model

log = logging.getLogger(__name__)

#: Gas for the agent's own transactions (skips an estimate round trip; a revert is still decoded).
SUBMIT_GAS = 400_000
#: Accepted handoffs whose step sizes form the gate's reference (median) for the next check.
STEP_WINDOW = 10
#: Rows an ``inflated`` attacker claims (evaluation only).
INFLATED_SAMPLES = 10**9


@dataclass(frozen=True)
class LocalData:
    """A node's own rows, unscaled: training part and held-out validation slice."""

    X: np.ndarray               # [n, d] raw features, columns in ``feature_names`` order
    y: np.ndarray               # [n] 0/1
    X_val: np.ndarray           # [m, d]
    y_val: np.ndarray           # [m]
    feature_names: tuple[str, ...]

    def stats(self, log_columns="all", with_grid: bool = False) -> FeatureStats:
        """Aggregate statistics of the training rows (all this node shares for scaling; with
        ``with_grid`` also its rows per grid cell, for the newton model's bins)."""
        return FeatureStats.compute(self.X, self.feature_names, log_columns, with_grid=with_grid)

    @classmethod
    def split(cls, X, y, feature_names, val_fraction: float = 0.2, seed: int = 0) -> "LocalData":
        """Seeded stratified split of one node's rows (each class keeps >= 1 training row).
        ``val_fraction`` at most 0.5: a node's reports may count no more rows than it trains on."""
        if not 0.0 <= float(val_fraction) <= 0.5:
            raise ConfigError(f"val_fraction must be in [0, 0.5], got {val_fraction}: a node's validation "
                              f"reports may count no more rows than the training rows it commits")
        X = np.asarray(X, dtype=np.float32)
        y = np.asarray(y).astype(np.int64)
        rng = np.random.default_rng(seed)
        val = []
        for c in (0, 1):
            idx = rng.permutation(np.flatnonzero(y == c))
            k = int(math.floor(len(idx) * val_fraction))
            val.extend(idx[:k].tolist())
        mask = np.zeros(len(y), dtype=bool)
        mask[val] = True
        return cls(X[~mask], y[~mask], X[mask], y[mask], tuple(feature_names))


class NodeAgent:
    """See the module docstring. ``attack`` makes this node malicious (evaluation only)."""

    def __init__(self, registry, store, account, task_id: int, data: LocalData | None, *,
                 reports=None, attack: AttackConfig | None = None, start_block: int = 0,
                 fetch_timeout: float = 10.0, patience: float = 300.0,
                 follower: EventFollower | None = None):
        self.registry = registry
        self.chain = registry.chain
        self.store = store
        self.account = account
        self.address = account.address
        self.task_id = int(task_id)
        self.data = data
        self.reports = reports
        self.attack = attack if attack is not None and attack.kind != "none" else None
        self.fetch_timeout = fetch_timeout
        self.patience = float(patience)      # how long a chain/store outage is ridden out
        self._waiting_for: bytes | None = None
        if follower is not None and (follower.task_id != self.task_id or follower.registry is not registry):
            raise AgentError(f"{account.address}: the shared follower follows task {follower.task_id} "
                             f"on another registry object; share a follower only between agents of "
                             f"task {self.task_id} on the same registry")
        self.follower = follower if follower is not None else \
            EventFollower(registry, task_id, start_block=start_block)
        fast_calls(self.chain)
        self.spec = None
        self.index = -1
        self._scaled = None
        self._gate = None
        self._step_cache: dict[bytes, float] = {}
        self._references: dict = {}           # newton: producer -> its RowsReference
        self._reported: set[str] = set()
        self._tried: set[int] = set()         # rounds a refused attacker already tried
        self._peer_done: dict[int, tuple] = {}  # round -> (candidate digests scored, retry after) of its report
        self.actions: list[str] = []          # what this agent did, for logs and tests

    def __repr__(self) -> str:   # never shows the key
        return f"NodeAgent({self.address}, task {self.task_id})"

    # -- setup ------------------------------------------------------------------------------
    def _ensure_spec(self) -> bool:
        if self.spec is not None:
            return True
        created = self.follower.history.created
        if created is None:
            return False
        spec = modelio.load_spec(self.store, created["configCid"], created["configDigest"], self.fetch_timeout)
        lowered = [a.lower() for a in spec.nodes]
        if self.attack is not None and self.attack.kind == "outsider":
            self.spec, self.index = spec, -1          # evaluation: tries to submit anyway
            return True
        if self.address.lower() not in lowered:
            raise AgentError(f"{self.address} is not a node of task {self.task_id}; its nodes are "
                             f"{', '.join(spec.nodes)}")
        if tuple(self.data.feature_names) != tuple(spec.feature_names):
            raise AgentError(f"this node's data has columns {list(self.data.feature_names)[:5]}..., task "
                             f"{self.task_id} needs {list(spec.feature_names)[:5]}... in that order; "
                             f"load the data with the task's feature list")
        if modelio.is_gbdt(spec) and spec.mode != "federated":
            raise AgentError(f"task {self.task_id} trains gbdt in {spec.mode} mode; gbdt grows its trees from "
                             f"the summed histograms of federated rounds only")
        if modelio.is_newton(spec) and spec.mode != "chained":
            raise AgentError(f"task {self.task_id} trains newton in {spec.mode} mode; it takes its Newton steps "
                             f"along the chain only")
        # the model's inputs (scaled for networks, raw for gbdt), training and validation rows
        self._scaled = (modelio.inputs(spec, self.data.X), self.data.y.astype(np.int64),
                        modelio.inputs(spec, self.data.X_val), self.data.y_val.astype(np.int64))
        self._gate = ValidationGate(**spec.gate) if spec.gate else None
        self.index = lowered.index(self.address.lower())
        self.spec = spec
        return True

    # -- the loop ---------------------------------------------------------------------------
    def step(self) -> str:
        """Read new events and chain state; do what is left to do. Returns what it did."""
        self.follower.catch_up()
        if not self._ensure_spec():
            return "waiting"
        # federated: the events already read say everything the decision needs (no view call);
        # chained hand-off state (head, expected, accepted) is read from the chain
        task = self.follower.history.federated_state(self.task_id) if self.spec.mode == "federated" \
            else self.registry.task(self.task_id)
        if task.closed:
            return "done"
        if task.mode == Mode.CHAINED:
            action = self._chained(task)
        else:
            action = self._federated(task)
        if action not in ("idle", "waiting"):
            self.actions.append(action)
        return action

    def run(self, poll_interval: float = 0.5, timeout: float | None = None, stop=None) -> None:
        """Step until the task is closed (or ``timeout`` seconds, or ``stop()`` returns True).
        Chain or store outages are retried with backoff for up to ``patience`` seconds."""
        start = time.monotonic()
        backoff = Backoff(f"node {self.address} (task {self.task_id})", patience=self.patience)
        while True:
            if backoff.run(self.step) == "done":
                return
            if stop is not None and stop():
                return
            if timeout is not None and time.monotonic() - start > timeout:
                raise AgentError(f"{self}: task not closed after {timeout:.0f} s; the coordinator may "
                                 f"be down (restart it; agents resume from chain state)")
            time.sleep(poll_interval)

    # -- chained ----------------------------------------------------------------------------
    def _chained(self, task) -> str:
        spec = self.spec
        cids = self.follower.history.cids
        if bytes(task.head) not in cids or bytes(task.accepted) not in cids:
            return "waiting"        # the chain's view is ahead of the events read so far: next poll
        finished = task.seq >= spec.total_handoffs
        if task.expected is None or task.expected.lower() != self.address.lower():
            if finished:
                return self._report({task.head, task.accepted})
            return "idle"
        if finished and "0x" + task.head.hex() in self._reported:
            return "idle"            # final check done (the coordinator closes the task)
        # it is our turn: look at the incoming (unaccepted) model first
        start_digest = task.accepted
        rejected = False
        if task.head != task.accepted and self.attack is not None and self.attack.kind in PROTOCOL_ATTACKS:
            start_digest = task.head          # a protocol attacker does not check what it gets
        elif task.head != task.accepted:
            ok, reason, head_state = self._check_incoming(task)
            if ok is None:
                return "waiting"     # incoming blob not retrievable yet; retried next poll
            if not ok:
                try:
                    self.registry.reject_handoff(self.task_id, task.head, reason, self.account)
                except ContractError as e:
                    log.info("%s: rejection of 0x%s reverted (%s); re-reading the chain", self,
                             task.head.hex()[:12], e.error_name)
                    return "reverted"
                log.info("task %s: %s rejected model 0x%s: %s", self.task_id, self.address,
                         task.head.hex()[:12], reason)
                rejected = True
            else:
                start_digest = task.head
        if finished:   # final check only; report on whichever model survived
            head = self.registry.task(self.task_id).head
            return self._report({head}) if not rejected else self._report({head}, tag="rejected+reported")
        made = self._produce(start_digest, task.seq // len(spec.nodes), "handoff", task.seq)
        if made is None:            # copy attack with nothing to copy: an honest handoff instead
            made = self._honest(start_digest, task.seq // len(spec.nodes), task.seq)
        digest_, cid, samples, loss = made
        # re-read right before sending: act only if the chain still expects exactly this
        now = self.registry.task(self.task_id)
        if now.closed or now.expected is None or now.expected.lower() != self.address.lower() \
                or now.head != start_digest or now.seq != task.seq:
            log.info("%s: chain moved on while training (seq %s -> %s); not submitting", self, task.seq, now.seq)
            return "stale"
        nxt = spec.next_node(self.address)
        try:
            self.registry.record_handoff(self.task_id, start_digest, digest_, cid, samples, loss, nxt,
                                         self.account, gas=SUBMIT_GAS)
        except ContractError as e:
            log.info("%s: handoff reverted (%s: %s); re-reading the chain", self, e.error_name, e)
            return "reverted"
        log.info("task %s: handoff %s by %s (loss %.4f, %s samples) -> %s", self.task_id, task.seq + 1,
                 self.address, loss, samples, nxt)
        return "rejected+handoff" if rejected else "handoff"

    def _check_incoming(self, task):
        """(accept, reason, state) for the unaccepted head, against the last accepted model;
        accept is None while its blob has not resolved and the task's patience has not run out."""
        handoff = self._handoff_of(task.head)
        try:
            head_state, meta = self._load_with_meta(task.head)
        except (IntegrityError, CodecError, BlobTooLargeError) as e:
            return False, f"invalid: blob failed verification ({type(e).__name__}: {e})", None
        except BlobNotFoundError as e:
            waited = self._chain_now() - (self.follower.block_time(handoff["_block"]) if handoff else 0)
            if handoff is not None and waited < self.spec.fetch_patience:
                if self._waiting_for != task.head:
                    self._waiting_for = task.head
                    log.info("%s: incoming model 0x%s not retrievable yet (%s); waiting up to %s s", self,
                             task.head.hex()[:12], e, self.spec.fetch_patience)
                return None, "", None
            return False, f"unavailable: blob did not resolve within {self.spec.fetch_patience} s", None
        if handoff is not None:
            problem = self._handoff_problem(handoff, meta)
            if problem:
                return False, problem, None
        if modelio.is_newton(self.spec):
            from chainfl.learning import newton

            pass_index = newton.pass_of(int(handoff["seq"]) if handoff else task.seq, len(self.spec.nodes))
            producer = str(handoff["node"]) if handoff else ""
            if handoff is not None and str(handoff["next"]).lower() != self.spec.next_node(producer).lower():
                # a producer that picks its receiver could visit its accomplices and skip the others
                return False, (f"order: {producer} handed over to {handoff['next']}, the task's order names "
                               f"{self.spec.next_node(producer)}"), head_state
            problem = newton.check_handoff(modelio.fitting(self.spec), self._load(task.accepted), head_state,
                                           self._samples_of(task.head), pass_index,
                                           self._rows_reference(producer) if pass_index > 0 else None)
            return (True, "newton: consistent sums", head_state) if problem is None else \
                (False, f"bounds: {problem}", head_state)
        if self._gate is None:
            return True, "no gate", head_state
        accepted_state = self._load(task.accepted)
        cfg = modelio.model_config(self.spec)
        _, _, Xv, yv = self._scaled
        step = self._step_size(head_state, accepted_state, self._samples_of(task.head))
        ok, reason = self._gate.check(self._gate.score(cfg, head_state, Xv, yv),
                                      self._gate.score(cfg, accepted_state, Xv, yv), step,
                                      self._recent_steps(task))
        return ok, reason if ok else f"gate: {reason}", head_state

    def _rows_reference(self, producer: str):
        """newton: what ``producer``'s first valid pass-0 handoff fixes about its rows (None if it
        has none), recomputed from the blobs on chain, so every node — and the audit — uses the same."""
        from chainfl.learning import newton

        key = producer.lower()
        if key not in self._references:
            n = len(self.spec.nodes)
            mine = [(h["parent"], h["digest"], h["samples"]) for h in self.follower.history.handoffs
                    if str(h["node"]).lower() == key and newton.pass_of(int(h["seq"]), n) == 0]
            ref = newton.first_reference(modelio.fitting(self.spec), mine, self._load_or_none)
            if ref is None:
                return None                   # not cached: a later poll may see its blob
            self._references[key] = ref
        return self._references[key]

    def _load_or_none(self, digest: bytes):
        try:
            return self._load(digest)
        except (IntegrityError, CodecError, BlobNotFoundError, AgentError) as e:
            log.info("%s: model 0x%s is not usable (%s)", self, bytes(digest).hex()[:12], e)
            return None

    def _handoff_problem(self, handoff: dict, meta: dict) -> str | None:
        """Why the handoff's blob is not what its producer claims (None if it is)."""
        producer = str(handoff["node"])
        maker = str(meta.get("node", ""))
        step = int(handoff["seq"]) - 1
        if meta.get("kind") != "handoff" or maker.lower() != producer.lower() \
                or meta.get("task") != self.task_id or meta.get("step") != step:
            return (f"copy: the blob is a {meta.get('kind')!r} made by {maker or '?'} for task "
                    f"{meta.get('task')!r} step {meta.get('step')!r}, not {producer}'s handoff {step + 1}")
        cap = self.spec.committed_samples(producer)
        if cap is not None and int(handoff["samples"]) > cap:
            return f"samples: claims {int(handoff['samples'])} training rows, but committed {cap} in its statistics"
        return None

    def _handoff_of(self, digest: bytes) -> dict | None:
        for h in reversed(self.follower.history.handoffs):
            if h["digest"] == digest:
                return h
        return None

    def _chain_now(self) -> int:
        return max(self.chain.latest_timestamp(), int(time.time()))

    def _step_size(self, state, parent_state, samples: int) -> float:
        """Distance moved per optimiser step (the sender's steps follow from its sample count)."""
        train = self.spec.train
        steps = max(1, int(train.get("epochs", 1)) * math.ceil(samples / int(train.get("batch_size", 64))))
        return float(np.linalg.norm(flatten(state).astype(np.float64) - flatten(parent_state))) / steps

    def _recent_steps(self, task) -> list[float]:
        """Step sizes of the last ``STEP_WINDOW`` accepted handoffs, recomputed from their blobs
        (verified), so every node's gate sees the same history, also after a restart. A handoff
        is accepted once a later handoff names it as parent."""
        handoffs = self.follower.history.handoffs
        parents = {h["parent"] for h in handoffs}
        accepted = [h for h in handoffs if h["digest"] in parents and h["digest"] != task.head][-STEP_WINDOW:]
        steps = []
        for h in accepted:
            if h["digest"] not in self._step_cache:
                try:
                    self._step_cache[h["digest"]] = self._step_size(self._load(h["digest"]), self._load(h["parent"]),
                                                                    int(h["samples"]))
                except (IntegrityError, CodecError, BlobNotFoundError) as e:
                    log.warning("%s: cannot recompute the step of handoff %s (%s); left out", self, h["seq"], e)
                    continue
            steps.append(self._step_cache[h["digest"]])
        return steps

    def _samples_of(self, digest: bytes) -> int:
        h = self._handoff_of(digest)
        return int(h["samples"]) if h is not None else 1

    # -- federated --------------------------------------------------------------------------
    def _federated(self, task) -> str:
        spec = self.spec
        hist = self.follower.history
        # report the validation histogram of each new global model (round quality, early
        # stopping and the release threshold are computed from these reports)
        if hist.finalized and self.index >= 0:
            latest = hist.finalized[max(hist.finalized)]["digest"]
            if "0x" + bytes(latest).hex() not in self._reported:
                return self._report({latest})
        r = task.round
        if not task.round_open or r < 1:
            return "idle"
        # the follower has read from the task's creation (the spec needs TaskCreated), so it has
        # seen round r open and every submission to it: no view call needed here
        if self.address in hist.submissions.get(r, {}) or r in self._tried:
            return self._peer_report(task, r)
        if self.chain.latest_timestamp() > task.deadline:
            return self._peer_report(task, r)
        made = self._produce(task.head, r, "update", r, round_=r)
        if made is None:
            return "waiting"                  # (copy attack: nothing to copy yet)
        digest_, cid, samples, loss = made
        now = self.registry.task(self.task_id)
        if now.closed or not now.round_open or now.round != r or now.head != task.head \
                or self.registry.has_submitted(self.task_id, r, self.address):
            log.info("%s: round %s moved on while training; not submitting", self, r)
            return "stale"
        try:
            self.registry.submit_update(self.task_id, r, task.head, digest_, cid, samples, loss, self.account,
                                        gas=SUBMIT_GAS)
        except ContractError as e:
            log.info("%s: submission to round %s reverted (%s); carrying on", self, r, e.error_name)
            if self.attack is not None:
                self._tried.add(r)            # a refused attacker does not retry every poll
            return "refused" if e.error_name == "RegistryNotTaskNode" else "reverted"
        log.info("task %s: round %s update by %s (loss %.4f, %s samples)", self.task_id, r, self.address,
                 loss, samples)
        return "submitted"

    def _peer_report(self, task, r: int) -> str:
        """Peer validation: once round ``r`` is ready to end (quorum submitted or deadline passed),
        score every other node's update on this node's validation rows and send the signed
        report; again when more updates arrive or a blob that had not resolved may have."""
        from chainfl.agents.peerreports import PeerReport, peer_settings
        from chainfl.aggregation.peer import score_candidates
        from chainfl.learning.evaluate import predict_logodds

        spec = self.spec
        if peer_settings(spec) is None or self.index < 0:
            return "idle"
        if self.reports is None:
            if r not in self._peer_done:
                self._peer_done[r] = ((), None)
                log.warning("task %s validates updates by peer reports, but %s has no report channel (pass "
                            "--reports, the directory shared with the coordinator): its round %s waits %s s for "
                            "this node's scores", self.task_id, self.address, r, peer_settings(spec)[1])
            return "idle"
        subs = self.follower.history.ordered_submissions(r)
        # the coordinator's clock (chain or wall time, whichever is later): a chain that mines only on
        # transactions must not keep the nodes from scoring a round the coordinator ends at its deadline
        if len(subs) < spec.effective_quorum() and self._chain_now() <= task.deadline:
            return "idle"
        others = [s for s in subs if str(s["node"]).lower() != self.address.lower()]
        key = tuple(sorted(bytes(s["digest"]) for s in others))
        done = self._peer_done.get(r)
        if done is not None and done[0] == key and (done[1] is None or time.monotonic() < done[1]):
            return "idle"
        _, _, Xv, yv = self._scaled
        if len(yv) == 0:                       # no rows to score on: an empty report says so
            try:
                self.reports.put_peer(PeerReport(self.task_id, r, "0x" + bytes(task.head).hex(), self.address,
                                                 {}).signed(self.account))
            except AgentError as e:
                log.warning("%s: cannot send its peer report of round %s: %s", self, r, e)
                return "idle"
            self._peer_done[r] = (key, None)
            return "peer-reported"
        cfg = modelio.model_config(spec)
        global_state = self._load(task.head)
        digests, logodds, missing = [], [], False
        for s in others:
            try:
                state, _ = modelio.load_update(self.store, s["cid"], bytes(s["digest"]), spec, global_state,
                                               self.fetch_timeout)
            except BlobNotFoundError:
                missing = True                 # scored once it resolves (the coordinator waits for it too)
                continue
            except (IntegrityError, CodecError, BlobTooLargeError):
                continue                       # the coordinator flags it as invalid
            digests.append("0x" + bytes(s["digest"]).hex())
            logodds.append(predict_logodds(cfg, state, Xv))
        if missing and not logodds:            # nothing to say yet (an empty report means "no rows to score on")
            self._peer_done[r] = (key, time.monotonic() + 5.0)
            return "idle"
        rows = score_candidates(yv, predict_logodds(cfg, global_state, Xv), np.stack(logodds)) if logodds else []
        if self.attack is not None and self.attack.kind not in PROTOCOL_ATTACKS and len(rows):
            rows = rows.copy()
            rows[:, [0, 2, 4]] *= -1           # evaluation: a malicious node also lies in its reports
        scores = {d: [float(v) for v in row] for d, row in zip(digests, rows)}
        try:
            self.reports.put_peer(PeerReport(self.task_id, r, "0x" + bytes(task.head).hex(), self.address,
                                             scores).signed(self.account))
        except AgentError as e:                # a broken or squatted channel: say so, retry later
            log.warning("%s: cannot send its peer report of round %s: %s", self, r, e)
            self._peer_done[r] = (key, time.monotonic() + 5.0)
            return "idle"
        self._peer_done[r] = (key, time.monotonic() + 5.0 if missing else None)
        log.info("task %s round %s: %s sent its peer scores of %s update(s)", self.task_id, r, self.address,
                 len(scores))
        return "peer-reported"

    def _produce(self, parent: bytes, train_step: int, kind: str, step_value: int, round_: int | None = None):
        """``(digest, cid, samples, loss)`` this node sends from the model ``parent``: its stored
        training result — or, for a node under a protocol attack (evaluation), what it sends
        instead: ``copy`` another node's update (federated) or an older model (chained),
        ``inflated`` the unchanged parent claiming 10^9 rows, ``unresolvable`` a result whose blob
        is never stored, ``outsider`` a result although it is not one of the task's nodes.
        None when there is nothing to copy yet."""
        kind_of_attack = self.attack.kind if self.attack is not None else None
        meta = {"kind": kind, "task": self.task_id, "node": self.address, "step": int(step_value)}
        if kind_of_attack == "copy":
            return self._copy_target(round_)
        state = self._load(parent)
        if kind_of_attack == "inflated" and modelio.is_gbdt(self.spec):
            trained, samples, loss = self._train(state, step=train_step)    # a real update, a false claim
            stored = modelio.put_model(self.store, trained, meta)
            return stored.digest, stored.cid, INFLATED_SAMPLES, loss
        if kind_of_attack == "outsider" and modelio.is_gbdt(self.spec):   # (no data) an update of the right size
            (shape, _), = modelio.update_layout(self.spec, state).values()
            stored = modelio.put_model(self.store, {"update": np.zeros(shape, np.float32)}, meta)
            return stored.digest, stored.cid, 1, 0.0
        if kind_of_attack in ("inflated", "outsider"):
            stored = modelio.put_model(self.store, state, meta)
            return stored.digest, stored.cid, INFLATED_SAMPLES if kind_of_attack == "inflated" else 1, 0.0
        trained, samples, loss = self._train(state, step=train_step)
        blob = encode_model(trained, meta)
        if kind_of_attack == "unresolvable":
            return blob_digest(blob), compute_cid(blob), samples, loss
        stored = modelio.put_blob(self.store, blob)
        self._before_submit(stored)
        return stored.digest, stored.cid, samples, loss

    def _copy_target(self, round_: int | None):
        hist = self.follower.history
        if round_ is not None:
            others = [a for a in hist.ordered_submissions(round_) if a["node"].lower() != self.address.lower()]
            if not others:
                return None
            a = others[0]
            return bytes(a["digest"]), a["cid"], int(a["samples"]), a["lossE6"] / 1e6
        task = self.registry.task(self.task_id)       # chained: hand on the last accepted model again
        h = self._handoff_of(task.accepted)
        if h is None or task.accepted == task.head:
            return None
        return bytes(h["digest"]), h["cid"], int(h["samples"]), h["lossE6"] / 1e6

    # -- shared -----------------------------------------------------------------------------
    def _load(self, digest: bytes):
        return self._load_with_meta(digest)[0]

    def _load_with_meta(self, digest: bytes):
        cid = self.follower.history.cid_of(digest)
        return modelio.load_model(self.store, cid, digest, self.spec, self.fetch_timeout)

    def _train(self, state, step: int):
        """(state, samples, loss): local training from ``state``; attacks applied if malicious."""
        X, y, _, _ = self._scaled
        if self.attack is not None:
            y = poison_labels(self.attack, y)
        if modelio.is_gbdt(self.spec):
            return self._histograms(state, X, y, step)
        if modelio.is_newton(self.spec):
            return self._newton(state, X, y, step)
        cfg = replace(modelio.train_config(self.spec), seed=modelio.node_seed(self.spec, self.index, step))
        res = train_local(modelio.model_config(self.spec), state, X, y, cfg)
        out = res.state
        if self.attack is not None and self.attack.poisons_model:
            vec = poison_update(self.attack, flatten(res.state), flatten(state), 1000 * step + self.index)
            out = unflatten(vec, res.state)
        return out, int(res.n_samples), float(res.loss)

    def _histograms(self, state, X, y, step: int):
        """gbdt: this round's update (histograms of the gradients at the global model, which
        nothing else about the rows leaves), the rows it covers and the global model's log-loss."""
        from chainfl.learning import gbdt

        cfg = modelio.boosting(self.spec)
        plain = {k: np.asarray(v) for k, v in state.items()}
        vec = gbdt.node_update(cfg, plain, X, y)
        if self.attack is not None and self.attack.poisons_model:
            vec = poison_update(self.attack, vec, np.zeros_like(vec), 1000 * step + self.index)
        p = np.clip(gbdt.predict_proba(cfg, plain, X), 1e-7, 1 - 1e-7)
        loss = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))) if len(y) else 0.0
        return {"update": np.asarray(vec, dtype=np.float32)}, int(X.shape[0]), loss

    def _newton(self, state, X, y, step: int):
        """newton: the state with this node's gradient/Hessian sums added (after the pass's Newton
        step when ``state`` completes a pass), its rows and the log-loss at the weights it used."""
        from chainfl.learning import newton

        cfg = modelio.fitting(self.spec)
        out = newton.contribute(cfg, state, X, y, step)              # chained: step = the pass index
        if self.attack is not None and self.attack.poisons_model:   # scale its own sums, keep the rest consistent
            base = newton.pass_base(state, out)
            for k in ("G", "H"):
                out[k] = base[k] + poison_update(self.attack, out[k] - base[k], np.zeros_like(out[k]),
                                                 1000 * step + self.index).astype(np.float64)
        p = np.clip(newton.predict_proba_at(cfg, out["w"], X), 1e-12, 1 - 1e-12)
        yf = np.asarray(y, dtype=np.float64)
        loss = float(-np.mean(yf * np.log(p) + (1 - yf) * np.log(1 - p))) if len(yf) else 0.0
        return out, int(X.shape[0]), loss

    def _honest(self, parent: bytes, train_step: int, step_value: int):
        trained, samples, loss = self._train(self._load(parent), step=train_step)
        stored = modelio.put_model(self.store, trained, {"kind": "handoff", "task": self.task_id,
                                                         "node": self.address, "step": int(step_value)})
        self._before_submit(stored)
        return stored.digest, stored.cid, samples, loss

    def _before_submit(self, stored) -> None:
        """Called after the result is stored and before it is submitted (a crash point in tests)."""

    def _report(self, digests, tag: str = "reported") -> str:
        todo = sorted("0x" + bytes(d).hex() for d in digests if "0x" + bytes(d).hex() not in self._reported)
        if not todo or self.reports is None:
            return "idle"
        cfg = modelio.model_config(self.spec)
        _, _, Xv, yv = self._scaled
        histograms = {}
        for hexd in todo:
            state = self._load(bytes.fromhex(hexd[2:]))
            histograms[hexd] = score_histogram(predict_scores(cfg, state, Xv), yv)
        self.reports.put(NodeReport(self.task_id, self.address, histograms).signed(self.account))
        self._reported.update(todo)
        log.info("task %s: %s reported validation histograms for %s model(s)", self.task_id, self.address,
                 len(todo))
        return tag
