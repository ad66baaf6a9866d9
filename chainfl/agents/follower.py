"""Follow the registry's events for one task with a cursor, in bounded block ranges.

A :class:`EventFollower` remembers the next block it has not read (``cursor``). Each :meth:`poll`
reads at most ``max_blocks`` blocks from the cursor (in ``chunk``-sized log queries) and advances
the cursor past them, so a poll costs the same whether the chain holds ten blocks or a million;
history is read once, never rescanned. The follower also keeps the few facts every agent needs
from events (state on chain has digests only; CIDs live in events):

* ``cids``: model digest -> CID, from ``TaskCreated`` (initial model), ``HandoffRecorded`` and
  ``RoundFinalized``;
* ``created``: the ``TaskCreated`` arguments (config digest + CID);
* ``submissions``: federated round -> {node: ``UpdateSubmitted`` args}, each with its place on
  chain (``_block``, ``_log``) so a round's updates can be taken in chain order;
* ``flags``: federated round -> {node: reason}; ``finalized`` / ``abandoned``: how rounds ended;
* ``turn_block``: chained, the block of the last event that set whose turn it is.

Block timestamps (for patience and turn timeouts measured in chain time, which a restarted
process reads the same way) come from :meth:`EventFollower.block_time`, cached.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from chainfl.chain.registry import Mode, TaskState
from chainfl.errors import AgentError

log = logging.getLogger(__name__)

#: Events an agent or coordinator of one task cares about.
TASK_EVENTS = ("TaskCreated", "TaskClosed", "HandoffRecorded", "HandoffRejected", "TurnSkipped",
               "RoundOpened", "UpdateSubmitted", "UpdateFlagged", "RoundFinalized", "RoundAbandoned")


@dataclass
class TaskHistory:
    """What the events of one task said so far (filled by :class:`EventFollower`)."""

    created: dict | None = None
    closed: dict | None = None
    cids: dict[bytes, str] = field(default_factory=dict)
    handoffs: list[dict] = field(default_factory=list)          # HandoffRecorded args, in order
    rejections: list[dict] = field(default_factory=list)        # HandoffRejected args, in order
    skips: list[dict] = field(default_factory=list)             # TurnSkipped args, in order
    rounds: dict[int, dict] = field(default_factory=dict)       # round -> RoundOpened args
    submissions: dict[int, dict[str, dict]] = field(default_factory=dict)
    flags: dict[int, dict[str, str]] = field(default_factory=dict)
    finalized: dict[int, dict] = field(default_factory=dict)    # round -> RoundFinalized args
    abandoned: dict[int, dict] = field(default_factory=dict)    # round -> RoundAbandoned args
    created_block: int | None = None
    turn_block: int | None = None                               # chained: last turn-setting event

    def apply(self, event) -> None:
        a = dict(event.args, _block=event.block_number, _log=event.log_index)
        name = event.name
        if name == "TaskCreated":
            self.created = a
            self.created_block = self.turn_block = event.block_number
            self.cids[a["initialDigest"]] = a["initialCid"]
        elif name == "TaskClosed":
            self.closed = a
        elif name == "HandoffRecorded":
            self.handoffs.append(a)
            self.cids[a["digest"]] = a["cid"]
            self.turn_block = event.block_number
        elif name == "HandoffRejected":
            self.rejections.append(a)
            self.turn_block = event.block_number
        elif name == "TurnSkipped":
            self.skips.append(a)
            self.turn_block = event.block_number
        elif name == "RoundOpened":
            self.rounds[int(a["round"])] = a
        elif name == "UpdateSubmitted":
            self.submissions.setdefault(int(a["round"]), {})[a["node"]] = a
            self.cids.setdefault(a["digest"], a["cid"])
        elif name == "UpdateFlagged":
            self.flags.setdefault(int(a["round"]), {})[a["node"]] = a["reason"]
        elif name == "RoundFinalized":
            self.finalized[int(a["round"])] = a
            self.cids[a["digest"]] = a["cid"]
        elif name == "RoundAbandoned":
            self.abandoned[int(a["round"])] = a

    @property
    def nodes(self) -> list[str]:
        """The task's node set, as TaskCreated recorded it."""
        return list(self.created["nodes"]) if self.created else []

    def ended(self, round_: int) -> bool:
        return round_ in self.finalized or round_ in self.abandoned

    def ordered_submissions(self, round_: int) -> list[dict]:
        """The round's ``UpdateSubmitted`` args in chain order (block, log index)."""
        return sorted(self.submissions.get(round_, {}).values(), key=lambda a: (a["_block"], a["_log"]))

    def abandoned_streak(self) -> int:
        """Rounds abandoned in a row at the end of the history so far."""
        streak = 0
        for r in sorted(self.rounds, reverse=True):
            if r in self.abandoned:
                streak += 1
            elif r in self.finalized:
                break
        return streak

    def federated_state(self, task_id: int) -> TaskState:
        """The federated task's state as ``Registry.task`` would return it at the last block read,
        derived from the events (closed, current round, open or not, its global model and
        deadline), so an agent deciding what to do needs no view call. Chained-mode fields are
        left empty; agents re-read the chain right before they send anything."""
        if self.created is None:
            raise AgentError(f"task {task_id}: TaskCreated not read yet (poll first)")
        r = max(self.rounds, default=0)
        opened = self.rounds.get(r)
        head = bytes(opened["globalModel"]) if opened else bytes(self.created["initialDigest"])
        if r in self.finalized:
            head = bytes(self.finalized[r]["digest"])
        return TaskState(task_id=int(task_id), mode=Mode.FEDERATED, closed=self.closed is not None,
                         round_open=opened is not None and not self.ended(r) and self.closed is None,
                         coordinator=self.created["coordinator"], expected=None, head_node=None, seq=r,
                         deadline=int(opened["deadline"]) if opened else 0, head=head, accepted=head,
                         node_count=len(self.nodes), round_submissions=len(self.submissions.get(r, {})))

    def cid_of(self, digest: bytes) -> str:
        try:
            return self.cids[bytes(digest)]
        except KeyError:
            raise AgentError(f"no event names a CID for model 0x{bytes(digest).hex()} yet; the follower "
                             f"has not read the block that recorded it (poll again)") from None


class EventFollower:
    """Reads one task's registry events from ``start_block`` on; see the module docstring."""

    def __init__(self, registry, task_id: int, start_block: int = 0, chunk: int = 2000,
                 max_blocks: int = 20_000):
        if chunk < 1 or max_blocks < 1:
            raise AgentError(f"chunk and max_blocks must be >= 1, got {chunk}, {max_blocks}")
        self.registry = registry
        self.task_id = int(task_id)
        self.cursor = max(int(start_block), 0)
        self.chunk = int(chunk)
        self.max_blocks = int(max_blocks)
        self.history = TaskHistory()
        self._times: dict[int, int] = {}

    def block_time(self, block: int) -> int:
        """The timestamp of ``block`` (cached; blocks never change their time)."""
        block = int(block)
        if block not in self._times:
            if len(self._times) > 4096:
                self._times.clear()
            self._times[block] = int(self.registry.chain.w3.eth.get_block(block)["timestamp"])
        return self._times[block]

    def poll(self) -> list:
        """Read the next (at most ``max_blocks``) blocks; returns their events for this task."""
        latest = self.registry.chain.block_number()
        if latest < self.cursor:
            return []
        end = min(latest, self.cursor + self.max_blocks - 1)
        events = self.registry.events(self.cursor, end, task_id=self.task_id, names=TASK_EVENTS,
                                      chunk=self.chunk)
        for event in events:
            self.history.apply(event)
        log.debug("task %s: read blocks %s..%s, %s event(s)", self.task_id, self.cursor, end, len(events))
        self.cursor = end + 1
        return events

    def catch_up(self) -> list:
        """Poll until the cursor has passed the latest block (bounded queries each time)."""
        out = []
        while True:
            out += self.poll()
            if self.cursor > self.registry.chain.block_number():
                return out
