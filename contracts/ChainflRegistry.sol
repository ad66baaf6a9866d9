// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IChainflRegistry} from "./IChainflRegistry.sol";

/// @title chainfl training registry
/// @notice The on-chain record of collaborative training. An admin manages member nodes and the
///         coordinator role; a coordinator creates tasks, each with a fixed node set. In a chained
///         task the model travels from node to node: the node whose turn it is records a handoff or
///         rejects the incoming model; no node can accept its own handoff. In a federated task the
///         coordinator opens rounds, the task's nodes submit one update per round before the
///         deadline, and the coordinator ends each round in one transaction with a decision on
///         every submitted update (included, excluded, flagged): finalized with an aggregate, or
///         abandoned without one (e.g. no usable update by the deadline).
/// @dev    Storage holds only what the checks need; history lives in events. Task membership is
///         written once at creation (one slot per node, shared with the node's last submitted
///         round), so a submission or handoff reads one slot and costs the same at any node count.
///         Loops run only over caller-supplied calldata bounded by MAX_TASK_NODES.
contract ChainflRegistry is IChainflRegistry {
    /// @notice Longest CID accepted, in bytes (a CIDv1 base32 sha2-256 string has 59).
    uint256 public constant MAX_CID_LENGTH = 128;
    /// @notice Largest node set of one task (bounds createTask's and a round decision's loops).
    uint256 public constant MAX_TASK_NODES = 512;
    /// @notice Longest free-text reason (flags, rejections, closing, abandoning), in bytes.
    uint256 public constant MAX_REASON_LENGTH = 256;

    uint8 private constant _INCLUDED = 0;
    uint8 private constant _EXCLUDED = 1;
    uint8 private constant _FLAGGED = 2;

    struct Task {
        bytes32 head; // slot 0
        bytes32 accepted; // slot 1
        address expected; // slot 2: 160 bits
        uint64 seq; //         64
        bool closed; //        8
        bool roundOpen; //     8
        address headNode; // slot 3: 160 bits, 0 when head == accepted
        uint64 deadline; //        64
        Mode mode; //              8 (never 0 for an existing task, so slot 3 is never zeroed)
        uint16 nodeCount; //       16
        address coordinator; // slot 4: 160 bits (never 0, so the counter beside it never costs a fresh slot)
        uint32 roundSubmissions; //     32
    }

    struct Node {
        bool member;
        bool coordinator;
        uint32 handoffs;
        uint32 updates;
        uint32 rejectionsIssued;
        uint32 rejectionsReceived;
        uint32 flags;
    }

    /// @dev A node's place in one task: written at creation, so later writes never start a slot.
    struct Seat {
        bool inTask; // one of the task's nodes
        uint64 round; // federated: last round this node submitted to (0 = never)
    }

    address private _admin;
    uint256 private _taskCount;
    mapping(address account => Node) private _nodes;
    mapping(uint256 taskId => Task) private _tasks;
    mapping(uint256 taskId => mapping(address node => Seat)) private _seats;

    modifier onlyAdmin() {
        _checkAdmin();
        _;
    }

    modifier onlyCoordinator() {
        _checkCoordinatorRole(msg.sender);
        _;
    }

    /// @notice The deployer becomes the admin. Emits an {AdminTransferred} event from address(0).
    constructor() {
        _admin = msg.sender;
        emit AdminTransferred(address(0), msg.sender);
    }

    // ------------------------------------------------------------------------------------------
    // Membership
    // ------------------------------------------------------------------------------------------

    /// @notice Register `account` as a member that may train and submit. Admin only.
    /// @param account account to add; must not be zero or already a member.
    /// @dev Emits a {NodeAdded} event.
    function addNode(address account) external onlyAdmin {
        if (account == address(0)) revert RegistryZeroAddress();
        Node storage n = _nodes[account];
        if (n.member) revert RegistryAlreadyMember(account);
        n.member = true;
        emit NodeAdded(account, msg.sender);
    }

    /// @notice Remove member `account`; its counters are kept. Admin only.
    /// @param account a current member.
    /// @dev Emits a {NodeRemoved} event.
    function removeNode(address account) external onlyAdmin {
        Node storage n = _nodes[account];
        if (!n.member) revert RegistryNotMember(account);
        n.member = false;
        emit NodeRemoved(account, msg.sender);
    }

    /// @notice Grant or revoke the coordinator role (may create and run tasks). Admin only.
    /// @param account account whose role changes; must not be zero.
    /// @param enabled true to grant, false to revoke.
    /// @dev Emits a {CoordinatorGranted} or {CoordinatorRevoked} event.
    function setCoordinator(address account, bool enabled) external onlyAdmin {
        if (account == address(0)) revert RegistryZeroAddress();
        _nodes[account].coordinator = enabled;
        if (enabled) emit CoordinatorGranted(account, msg.sender);
        else emit CoordinatorRevoked(account, msg.sender);
    }

    /// @notice Hand the admin role to `newAdmin`. Admin only.
    /// @param newAdmin the next admin; must not be zero.
    /// @dev Emits an {AdminTransferred} event.
    function transferAdmin(address newAdmin) external onlyAdmin {
        if (newAdmin == address(0)) revert RegistryZeroAddress();
        address previous = _admin;
        _admin = newAdmin;
        emit AdminTransferred(previous, newAdmin);
    }

    // ------------------------------------------------------------------------------------------
    // Tasks
    // ------------------------------------------------------------------------------------------

    /// @notice Create a training task with a fixed node set; the caller becomes its coordinator.
    ///         Coordinator role only.
    /// @param configDigest sha256 of the task's config blob.
    /// @param configCid CID of the config blob.
    /// @param mode Mode.Chained or Mode.Federated.
    /// @param initialDigest sha256 of the initial model blob (the first head / global model).
    /// @param initialCid CID of the initial model blob.
    /// @param nodes the task's nodes: registered members, no duplicates, 1..MAX_TASK_NODES.
    ///        Chained: the visiting order; `nodes[0]` has the first turn.
    /// @return taskId the new task's id (sequential from 1).
    /// @dev Emits a {TaskCreated} event. Writes one slot per node (gas grows with the node set
    ///      here, once, so that every later submission or handoff checks membership in O(1)).
    function createTask(
        bytes32 configDigest,
        string calldata configCid,
        Mode mode,
        bytes32 initialDigest,
        string calldata initialCid,
        address[] calldata nodes
    ) external onlyCoordinator returns (uint256 taskId) {
        if (mode == Mode.None) revert RegistryWrongMode(0, uint8(mode));
        _checkModel(configDigest, configCid);
        _checkModel(initialDigest, initialCid);
        taskId = _newTask(mode, initialDigest, nodes);
        emit TaskCreated(taskId, msg.sender, mode, configDigest, configCid, initialDigest, initialCid, nodes);
    }

    /// @notice Close a task: no further handoffs, rounds or updates. Optionally anchors the released
    ///         model (e.g. the final detector) by digest + CID, and the evidence behind the end
    ///         (e.g. the nodes' signed validation reports the threshold and an early stop were
    ///         computed from). Task coordinator only.
    /// @param taskId an open task.
    /// @param releaseDigest sha256 of the released model blob, or 0 (with an empty CID) for none.
    /// @param releaseCid CID of the released model blob, or "" for none.
    /// @param reason why the task ends (e.g. "30 rounds done", "stopped early: ..."), kept in the event.
    /// @param evidenceDigest sha256 of the evidence blob, or 0 (with an empty CID) for none.
    /// @param evidenceCid CID of the evidence blob, or "" for none.
    /// @dev Emits a {TaskClosed} event.
    function closeTask(
        uint256 taskId,
        bytes32 releaseDigest,
        string calldata releaseCid,
        string calldata reason,
        bytes32 evidenceDigest,
        string calldata evidenceCid
    ) external {
        Task storage t = _existingTask(taskId);
        if (t.closed) revert RegistryTaskClosed(taskId);
        _checkTaskCoordinator(t, taskId);
        if (releaseDigest != bytes32(0) || bytes(releaseCid).length != 0) _checkModel(releaseDigest, releaseCid);
        if (evidenceDigest != bytes32(0) || bytes(evidenceCid).length != 0) _checkModel(evidenceDigest, evidenceCid);
        _checkReason(reason);
        t.closed = true;
        t.roundOpen = false;
        emit TaskClosed(taskId, msg.sender, releaseDigest, releaseCid, reason, evidenceDigest, evidenceCid);
    }

    // ------------------------------------------------------------------------------------------
    // Chained mode
    // ------------------------------------------------------------------------------------------

    /// @notice Record a training step: the caller trained `parent` (the current head) into
    ///         `digest` and hands the model to `next`. Accepts `parent`. Only the expected node.
    ///         Since `next` is never the caller and a skip never gives the turn to the producer of
    ///         an unaccepted head, no node can accept its own handoff (in tasks of 2+ nodes).
    /// @param taskId an open chained task.
    /// @param parent must equal the task's head.
    /// @param digest sha256 of the new model blob; non-zero and different from `parent`.
    /// @param cid CID of the new model blob (1..MAX_CID_LENGTH bytes).
    /// @param samples number of training samples used; non-zero.
    /// @param lossE6 training loss times 1e6, rounded.
    /// @param next a node of the task whose turn is next; not the caller (unless the task has one node).
    /// @dev Emits a {HandoffRecorded} event.
    function recordHandoff(
        uint256 taskId,
        bytes32 parent,
        bytes32 digest,
        string calldata cid,
        uint64 samples,
        uint32 lossE6,
        address next
    ) external {
        Task storage t = _liveTask(taskId, Mode.Chained);
        Node storage sender = _checkTurn(t, taskId);
        bytes32 head = t.head;
        if (parent != head) revert RegistryStaleParent(taskId, head, parent);
        if (digest == head) revert RegistryUnchangedModel(taskId, digest);
        _checkModel(digest, cid);
        if (samples == 0) revert RegistryZeroSamples();
        if (next == msg.sender && t.nodeCount > 1) revert RegistryHandoffToSelf(taskId, msg.sender);
        _checkTaskNode(taskId, next);
        uint64 seq = t.seq + 1;
        t.accepted = head;
        t.head = digest;
        t.headNode = msg.sender;
        t.expected = next;
        t.seq = seq;
        sender.handoffs += 1;
        emit HandoffRecorded(taskId, msg.sender, next, seq, parent, digest, cid, samples, lossE6);
    }

    /// @notice Reject the unaccepted head (e.g. poisoning suspected, or its blob never resolved):
    ///         the head returns to the last accepted model and the caller trains from there.
    ///         Only the expected node.
    /// @param taskId an open chained task.
    /// @param digest must equal the head, and the head must not be accepted yet.
    /// @param reason short human-readable reason, kept in the event.
    /// @dev Emits a {HandoffRejected} event.
    function rejectHandoff(uint256 taskId, bytes32 digest, string calldata reason) external {
        Task storage t = _liveTask(taskId, Mode.Chained);
        Node storage sender = _checkTurn(t, taskId);
        _checkReason(reason);
        bytes32 head = t.head;
        bytes32 accepted = t.accepted;
        if (digest != head || head == accepted) revert RegistryNothingToReject(taskId, head, accepted, digest);
        address producer = t.headNode;
        t.head = accepted;
        t.headNode = address(0);
        sender.rejectionsIssued += 1;
        _nodes[producer].rejectionsReceived += 1;
        emit HandoffRejected(taskId, msg.sender, producer, digest, accepted, reason);
    }

    /// @notice Pass the turn to `next` without a handoff (the expected node is silent). The head
    ///         does not change; while it is unaccepted, the turn cannot go to its producer.
    ///         Task coordinator only.
    /// @param taskId an open chained task.
    /// @param next a node of the task.
    /// @dev Emits a {TurnSkipped} event.
    function skipTurn(uint256 taskId, address next) external {
        Task storage t = _liveTask(taskId, Mode.Chained);
        _checkTaskCoordinator(t, taskId);
        _checkTaskNode(taskId, next);
        if (t.head != t.accepted && next == t.headNode) revert RegistrySkipToProducer(taskId, next);
        address skipped = t.expected;
        t.expected = next;
        emit TurnSkipped(taskId, skipped, next, msg.sender);
    }

    // ------------------------------------------------------------------------------------------
    // Federated mode
    // ------------------------------------------------------------------------------------------

    /// @notice Open the next round on the current global model. Task coordinator only; the
    ///         previous round must be finalized or abandoned.
    /// @param taskId an open federated task.
    /// @param deadline unix time after which submissions are refused; must be in the future.
    /// @return round the new round number (previous + 1, starting at 1).
    /// @dev Emits a {RoundOpened} event.
    function openRound(uint256 taskId, uint64 deadline) external returns (uint64 round) {
        Task storage t = _liveTask(taskId, Mode.Federated);
        _checkTaskCoordinator(t, taskId);
        if (t.roundOpen) revert RegistryRoundStillOpen(taskId, t.seq);
        if (deadline <= block.timestamp) revert RegistryBadDeadline(deadline, block.timestamp);
        round = t.seq + 1;
        t.seq = round;
        t.roundOpen = true;
        t.deadline = deadline;
        t.roundSubmissions = 0;
        emit RoundOpened(taskId, round, t.head, deadline);
    }

    /// @notice Submit the caller's update for the open round: `parent` (the round's global model)
    ///         trained into `digest`. At most once per node and round, before the deadline.
    ///         Registered members of the task's node set only.
    /// @param taskId an open federated task.
    /// @param round the open round.
    /// @param parent must equal the round's global model.
    /// @param digest sha256 of the update blob; non-zero.
    /// @param cid CID of the update blob.
    /// @param samples number of training samples used; non-zero.
    /// @param lossE6 training loss times 1e6, rounded.
    /// @dev Emits an {UpdateSubmitted} event.
    function submitUpdate(
        uint256 taskId,
        uint64 round,
        bytes32 parent,
        bytes32 digest,
        string calldata cid,
        uint64 samples,
        uint32 lossE6
    ) external {
        Node storage sender = _nodes[msg.sender];
        if (!sender.member) revert RegistryNotMember(msg.sender);
        Task storage t = _liveTask(taskId, Mode.Federated);
        _checkOpenRound(t, taskId, round);
        uint64 deadline = t.deadline;
        if (block.timestamp > deadline) revert RegistryDeadlinePassed(taskId, round, deadline, block.timestamp);
        bytes32 head = t.head;
        if (parent != head) revert RegistryStaleParent(taskId, head, parent);
        _checkModel(digest, cid);
        if (samples == 0) revert RegistryZeroSamples();
        Seat storage own = _seats[taskId][msg.sender];
        if (!own.inTask) revert RegistryNotTaskNode(taskId, msg.sender);
        if (own.round == round) revert RegistryAlreadySubmitted(taskId, round, msg.sender);
        own.round = round;
        t.roundSubmissions += 1;
        sender.updates += 1;
        emit UpdateSubmitted(taskId, round, msg.sender, parent, digest, cid, samples, lossE6);
    }

    /// @notice End the open round with the aggregate, which becomes the global model, and a
    ///         decision on every update submitted to it. Task coordinator only.
    /// @param taskId an open federated task.
    /// @param round the open round.
    /// @param digest sha256 of the aggregate model blob; non-zero.
    /// @param cid CID of the aggregate model blob.
    /// @param decision every submitter of the round exactly once (see {Decision}); at least one included.
    /// @dev Emits one {UpdateFlagged} event per flagged node, then a {RoundFinalized} event.
    ///      Loops over the decision's nodes only (bounded by the task's node set).
    function finalizeRound(uint256 taskId, uint64 round, bytes32 digest, string calldata cid, Decision calldata decision)
        external
    {
        Task storage t = _liveTask(taskId, Mode.Federated);
        _checkTaskCoordinator(t, taskId);
        _checkOpenRound(t, taskId, round);
        _checkModel(digest, cid);
        (address[] memory included, address[] memory excluded) =
            _settle(taskId, round, t.roundSubmissions, decision, false);
        if (included.length == 0) revert RegistryNothingIncluded(taskId, round);
        bytes32 parent = t.head;
        t.head = digest;
        t.accepted = digest;
        t.roundOpen = false;
        emit RoundFinalized(
            taskId, round, parent, digest, cid, included, excluded, decision.evidenceDigest, decision.evidenceCid
        );
    }

    /// @notice End the open round without an aggregate (e.g. no update by the deadline, or none
    ///         usable): the global model stays, the next round may be opened on it. Every
    ///         submitted update still gets a decision (excluded or flagged, never included).
    ///         Task coordinator only.
    /// @param taskId an open federated task.
    /// @param round the open round.
    /// @param decision every submitter of the round exactly once, none included.
    /// @param reason why the round ends without an aggregate, kept in the event.
    /// @dev Emits one {UpdateFlagged} event per flagged node, then a {RoundAbandoned} event.
    function abandonRound(uint256 taskId, uint64 round, Decision calldata decision, string calldata reason) external {
        Task storage t = _liveTask(taskId, Mode.Federated);
        _checkTaskCoordinator(t, taskId);
        _checkOpenRound(t, taskId, round);
        _checkReason(reason);
        (, address[] memory excluded) = _settle(taskId, round, t.roundSubmissions, decision, true);
        t.roundOpen = false;
        emit RoundAbandoned(taskId, round, t.head, excluded, reason, decision.evidenceDigest, decision.evidenceCid);
    }

    // ------------------------------------------------------------------------------------------
    // Views
    // ------------------------------------------------------------------------------------------

    /// @notice The current admin.
    function admin() external view returns (address) {
        return _admin;
    }

    /// @notice Number of tasks created so far (the last task id).
    function taskCount() external view returns (uint256) {
        return _taskCount;
    }

    /// @notice State of task `taskId`; `mode` is Mode.None for an unknown id.
    function task(uint256 taskId) external view returns (TaskView memory v) {
        Task storage t = _tasks[taskId];
        v = TaskView({
            mode: t.mode,
            closed: t.closed,
            roundOpen: t.roundOpen,
            coordinator: t.coordinator,
            expected: t.expected,
            headNode: t.headNode,
            seq: t.seq,
            deadline: t.deadline,
            head: t.head,
            accepted: t.accepted,
            nodeCount: t.nodeCount,
            roundSubmissions: t.roundSubmissions
        });
    }

    /// @notice Role flags and counters of `account` (all zero for an unknown account).
    function node(address account) external view returns (NodeView memory v) {
        Node storage n = _nodes[account];
        v = NodeView({
            member: n.member,
            coordinator: n.coordinator,
            handoffs: n.handoffs,
            updates: n.updates,
            rejectionsIssued: n.rejectionsIssued,
            rejectionsReceived: n.rejectionsReceived,
            flags: n.flags
        });
    }

    /// @notice Whether `account` submitted an update to round `round` of task `taskId`.
    /// @dev Only the node's latest round is stored, so this answers for the latest round it
    ///      submitted to; earlier rounds are answered from {UpdateSubmitted} events.
    function hasSubmitted(uint256 taskId, uint64 round, address account) external view returns (bool) {
        return round != 0 && _seats[taskId][account].round == round;
    }

    /// @notice Whether `account` is one of task `taskId`'s nodes, and the latest round it
    ///         submitted to (0 = never).
    function seat(uint256 taskId, address account) external view returns (bool inTask, uint64 lastRound) {
        Seat storage s = _seats[taskId][account];
        return (s.inTask, s.round);
    }

    // ------------------------------------------------------------------------------------------
    // Task creation
    // ------------------------------------------------------------------------------------------

    /// @dev Seats `nodes` (members, no duplicates, 1..MAX_TASK_NODES) in a new task and stores it.
    function _newTask(Mode mode, bytes32 initialDigest, address[] calldata nodes) private returns (uint256 taskId) {
        uint256 count = nodes.length;
        if (count == 0) revert RegistryNoNodes();
        if (count > MAX_TASK_NODES) revert RegistryTooManyNodes(count, MAX_TASK_NODES);
        taskId = ++_taskCount;
        mapping(address => Seat) storage seats = _seats[taskId];
        for (uint256 i = 0; i < count; ++i) {
            address account = nodes[i];
            _checkMember(account);
            Seat storage s = seats[account];
            if (s.inTask) revert RegistryDuplicateTaskNode(account);
            s.inTask = true;
        }
        Task storage t = _tasks[taskId];
        t.head = initialDigest;
        t.accepted = initialDigest;
        if (mode == Mode.Chained) t.expected = nodes[0];
        t.mode = mode;
        t.nodeCount = uint16(count);
        t.coordinator = msg.sender;
    }

    // ------------------------------------------------------------------------------------------
    // Round decisions
    // ------------------------------------------------------------------------------------------

    /// @dev Checks that `d` decides on exactly the round's submitters (ascending, each submitted
    ///      to `round`, as many as were submitted), records and announces the flags, and returns
    ///      the included and excluded nodes in ascending order.
    function _settle(uint256 taskId, uint64 round, uint32 submitted, Decision calldata d, bool abandon)
        private
        returns (address[] memory included, address[] memory excluded)
    {
        uint256 count = d.nodes.length;
        if (d.codes.length != count || count != submitted) {
            revert RegistryDecisionCount(taskId, round, count, submitted);
        }
        if (d.evidenceDigest != bytes32(0) || bytes(d.evidenceCid).length != 0) {
            _checkModel(d.evidenceDigest, d.evidenceCid);
        }
        (uint256 nIncluded, uint256 nExcluded) = _checkDecided(taskId, round, d, abandon);
        if (d.reasons.length != count - nIncluded - nExcluded) {
            revert RegistryReasonCount(count - nIncluded - nExcluded, d.reasons.length);
        }
        included = new address[](nIncluded);
        excluded = new address[](nExcluded);
        _record(taskId, round, d, included, excluded);
    }

    /// @dev Every decided node submitted to `round`, ascending, with a valid code; counts them.
    function _checkDecided(uint256 taskId, uint64 round, Decision calldata d, bool abandon)
        private
        view
        returns (uint256 nIncluded, uint256 nExcluded)
    {
        mapping(address => Seat) storage seats = _seats[taskId];
        address previous = address(0);
        uint256 count = d.nodes.length;
        for (uint256 i = 0; i < count; ++i) {
            address account = d.nodes[i];
            if (account <= previous) revert RegistryNodesNotSorted(i, account);
            previous = account;
            if (seats[account].round != round) revert RegistryNotSubmitted(taskId, round, account);
            uint8 code = uint8(d.codes[i]);
            if (code == _INCLUDED) {
                if (abandon) revert RegistryIncludedInAbandon(i, account);
                ++nIncluded;
            } else if (code == _EXCLUDED) {
                ++nExcluded;
            } else if (code != _FLAGGED) {
                revert RegistryBadDecision(i, code);
            }
        }
    }

    /// @dev Fills `included` / `excluded` (pre-sized) and records + announces each flag.
    function _record(
        uint256 taskId,
        uint64 round,
        Decision calldata d,
        address[] memory included,
        address[] memory excluded
    ) private {
        uint256 ii = 0;
        uint256 ie = 0;
        uint256 ir = 0;
        uint256 count = d.nodes.length;
        for (uint256 i = 0; i < count; ++i) {
            address account = d.nodes[i];
            uint8 code = uint8(d.codes[i]);
            if (code == _INCLUDED) {
                included[ii++] = account;
            } else if (code == _EXCLUDED) {
                excluded[ie++] = account;
            } else {
                _flag(taskId, round, account, d.reasons[ir++]);
            }
        }
    }

    function _flag(uint256 taskId, uint64 round, address account, string calldata reason) private {
        _checkReason(reason);
        _nodes[account].flags += 1;
        emit UpdateFlagged(taskId, round, account, reason);
    }

    // ------------------------------------------------------------------------------------------
    // Checks
    // ------------------------------------------------------------------------------------------

    function _checkAdmin() private view {
        if (msg.sender != _admin) revert RegistryNotAdmin(msg.sender);
    }

    function _checkCoordinatorRole(address account) private view {
        if (!_nodes[account].coordinator) revert RegistryNotCoordinator(account);
    }

    function _checkMember(address account) private view {
        if (!_nodes[account].member) revert RegistryNotMember(account);
    }

    function _checkTaskNode(uint256 taskId, address account) private view {
        if (!_seats[taskId][account].inTask) revert RegistryNotTaskNode(taskId, account);
    }

    function _checkModel(bytes32 digest, string calldata cid) private pure {
        if (digest == bytes32(0)) revert RegistryZeroDigest();
        uint256 length = bytes(cid).length;
        if (length == 0) revert RegistryEmptyCid();
        if (length > MAX_CID_LENGTH) revert RegistryCidTooLong(length, MAX_CID_LENGTH);
    }

    function _checkReason(string calldata reason) private pure {
        uint256 length = bytes(reason).length;
        if (length > MAX_REASON_LENGTH) revert RegistryReasonTooLong(length, MAX_REASON_LENGTH);
    }

    function _existingTask(uint256 taskId) private view returns (Task storage t) {
        t = _tasks[taskId];
        if (t.mode == Mode.None) revert RegistryUnknownTask(taskId);
    }

    function _liveTask(uint256 taskId, Mode mode) private view returns (Task storage t) {
        t = _existingTask(taskId);
        if (t.mode != mode) revert RegistryWrongMode(taskId, uint8(t.mode));
        if (t.closed) revert RegistryTaskClosed(taskId);
    }

    function _checkTaskCoordinator(Task storage t, uint256 taskId) private view {
        address coordinator = t.coordinator;
        if (msg.sender != coordinator) revert RegistryNotTaskCoordinator(taskId, coordinator, msg.sender);
        _checkCoordinatorRole(msg.sender);
    }

    function _checkTurn(Task storage t, uint256 taskId) private view returns (Node storage sender) {
        address expected = t.expected;
        if (msg.sender != expected) revert RegistryNotYourTurn(taskId, expected, msg.sender);
        sender = _nodes[msg.sender];
        if (!sender.member) revert RegistryNotMember(msg.sender);
    }

    function _checkOpenRound(Task storage t, uint256 taskId, uint64 round) private view {
        uint64 current = t.seq;
        if (round != current) revert RegistryWrongRound(taskId, current, round);
        if (!t.roundOpen) revert RegistryRoundNotOpen(taskId, round);
    }
}
