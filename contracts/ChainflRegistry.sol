// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IChainflRegistry} from "./IChainflRegistry.sol";

/// @title chainfl training registry
/// @notice The on-chain record of collaborative training. An admin manages member nodes and the
///         coordinator role; a coordinator creates tasks. In a chained task the model travels from
///         node to node: the node whose turn it is records a handoff or rejects the incoming model.
///         In a federated task the coordinator opens rounds, members submit one update per round
///         before the deadline, and the coordinator flags updates and finalizes the aggregate.
/// @dev    Storage holds only what the checks need; history lives in events. No function loops
///         over nodes or rounds in storage, so gas does not grow with either. Per-node counters
///         share one slot with the membership flag, so updating them never writes a zero slot.
contract ChainflRegistry is IChainflRegistry {
    /// @notice Longest CID accepted, in bytes (a CIDv1 base32 sha2-256 string has 59).
    uint256 public constant MAX_CID_LENGTH = 128;

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
        address coordinator; // slot 4
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

    struct Submission {
        uint64 round; // last round this node submitted to in this task (0 = never)
        bool flagged; // that submission was flagged by the coordinator
    }

    address private _admin;
    uint256 private _taskCount;
    mapping(address account => Node) private _nodes;
    mapping(uint256 taskId => Task) private _tasks;
    mapping(uint256 taskId => mapping(address node => Submission)) private _submissions;

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

    /// @notice Register `node` as a member that may train and submit. Admin only.
    /// @param account account to add; must not be zero or already a member.
    /// @dev Emits a {NodeAdded} event.
    function addNode(address account) external onlyAdmin {
        if (account == address(0)) revert RegistryZeroAddress();
        Node storage n = _nodes[account];
        if (n.member) revert RegistryAlreadyMember(account);
        n.member = true;
        emit NodeAdded(account, msg.sender);
    }

    /// @notice Remove `node` from the members; its counters are kept. Admin only.
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

    /// @notice Create a training task; the caller becomes its coordinator. Coordinator role only.
    /// @param configDigest sha256 of the task's config blob.
    /// @param configCid CID of the config blob.
    /// @param mode Mode.Chained or Mode.Federated.
    /// @param initialDigest sha256 of the initial model blob (the first head / global model).
    /// @param initialCid CID of the initial model blob.
    /// @param firstNode chained: the member whose turn is first; federated: ignored (pass 0).
    /// @return taskId the new task's id (sequential from 1).
    /// @dev Emits a {TaskCreated} event.
    function createTask(
        bytes32 configDigest,
        string calldata configCid,
        Mode mode,
        bytes32 initialDigest,
        string calldata initialCid,
        address firstNode
    ) external onlyCoordinator returns (uint256 taskId) {
        if (mode == Mode.None) revert RegistryWrongMode(0, uint8(mode));
        _checkModel(configDigest, configCid);
        _checkModel(initialDigest, initialCid);
        if (mode == Mode.Chained) _checkMember(firstNode);
        else firstNode = address(0);
        taskId = ++_taskCount;
        Task storage t = _tasks[taskId];
        t.head = initialDigest;
        t.accepted = initialDigest;
        t.expected = firstNode;
        t.mode = mode;
        t.coordinator = msg.sender;
        emit TaskCreated(taskId, msg.sender, mode, configDigest, configCid, initialDigest, initialCid, firstNode);
    }

    /// @notice Close a task: no further handoffs, rounds or updates. Optionally anchors the released
    ///         model (e.g. the final detector) by digest + CID. Task coordinator only.
    /// @param taskId an open task.
    /// @param releaseDigest sha256 of the released model blob, or 0 (with an empty CID) for none.
    /// @param releaseCid CID of the released model blob, or "" for none.
    /// @dev Emits a {TaskClosed} event.
    function closeTask(uint256 taskId, bytes32 releaseDigest, string calldata releaseCid) external {
        Task storage t = _existingTask(taskId);
        if (t.closed) revert RegistryTaskClosed(taskId);
        _checkTaskCoordinator(t, taskId);
        if (releaseDigest != bytes32(0) || bytes(releaseCid).length != 0) _checkModel(releaseDigest, releaseCid);
        t.closed = true;
        t.roundOpen = false;
        emit TaskClosed(taskId, msg.sender, releaseDigest, releaseCid);
    }

    // ------------------------------------------------------------------------------------------
    // Chained mode
    // ------------------------------------------------------------------------------------------

    /// @notice Record a training step: the caller trained `parent` (the current head) into
    ///         `digest` and hands the model to `next`. Accepts `parent`. Only the expected member.
    /// @param taskId an open chained task.
    /// @param parent must equal the task's head.
    /// @param digest sha256 of the new model blob; non-zero and different from `parent`.
    /// @param cid CID of the new model blob (1..MAX_CID_LENGTH bytes).
    /// @param samples number of training samples used; non-zero.
    /// @param lossE6 training loss times 1e6, rounded.
    /// @param next the member whose turn is next (may be the caller).
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
        _checkMember(next);
        uint64 seq = t.seq + 1;
        t.accepted = head;
        t.head = digest;
        t.headNode = msg.sender;
        t.expected = next;
        t.seq = seq;
        sender.handoffs += 1;
        emit HandoffRecorded(taskId, msg.sender, next, seq, parent, digest, cid, samples, lossE6);
    }

    /// @notice Reject the unaccepted head (e.g. poisoning suspected): the head returns to the last
    ///         accepted model and the caller trains from there. Only the expected member.
    /// @param taskId an open chained task.
    /// @param digest must equal the head, and the head must not be accepted yet.
    /// @param reason short human-readable reason, kept in the event.
    /// @dev Emits a {HandoffRejected} event.
    function rejectHandoff(uint256 taskId, bytes32 digest, string calldata reason) external {
        Task storage t = _liveTask(taskId, Mode.Chained);
        Node storage sender = _checkTurn(t, taskId);
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

    /// @notice Pass the turn to `next` without a handoff (the expected node is offline).
    ///         The head does not change. Task coordinator only.
    /// @param taskId an open chained task.
    /// @param next a member.
    /// @dev Emits a {TurnSkipped} event.
    function skipTurn(uint256 taskId, address next) external {
        Task storage t = _liveTask(taskId, Mode.Chained);
        _checkTaskCoordinator(t, taskId);
        _checkMember(next);
        address skipped = t.expected;
        t.expected = next;
        emit TurnSkipped(taskId, skipped, next, msg.sender);
    }

    // ------------------------------------------------------------------------------------------
    // Federated mode
    // ------------------------------------------------------------------------------------------

    /// @notice Open the next round on the current global model. Task coordinator only; the
    ///         previous round must be finalized.
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
        emit RoundOpened(taskId, round, t.head, deadline);
    }

    /// @notice Submit the caller's update for the open round: `parent` (the round's global model)
    ///         trained into `digest`. At most once per node and round, before the deadline. Members only.
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
        Submission storage s = _submissions[taskId][msg.sender];
        if (s.round == round) revert RegistryAlreadySubmitted(taskId, round, msg.sender);
        s.round = round;
        s.flagged = false;
        sender.updates += 1;
        emit UpdateSubmitted(taskId, round, msg.sender, parent, digest, cid, samples, lossE6);
    }

    /// @notice Flag `node`'s update in the open round as suspicious; a flagged update cannot be
    ///         included in the aggregate. Task coordinator only.
    /// @param taskId an open federated task.
    /// @param round the open round.
    /// @param account a node that submitted in this round and is not flagged yet.
    /// @param reason short human-readable reason, kept in the event.
    /// @dev Emits an {UpdateFlagged} event.
    function flagUpdate(uint256 taskId, uint64 round, address account, string calldata reason) external {
        Task storage t = _liveTask(taskId, Mode.Federated);
        _checkTaskCoordinator(t, taskId);
        _checkOpenRound(t, taskId, round);
        Submission storage s = _submissions[taskId][account];
        if (s.round != round) revert RegistryNotSubmitted(taskId, round, account);
        if (s.flagged) revert RegistryAlreadyFlagged(taskId, round, account);
        s.flagged = true;
        _nodes[account].flags += 1;
        emit UpdateFlagged(taskId, round, account, reason);
    }

    /// @notice Close the open round with the aggregate, which becomes the global model.
    ///         Task coordinator only.
    /// @param taskId an open federated task.
    /// @param round the open round.
    /// @param digest sha256 of the aggregate model blob; non-zero.
    /// @param cid CID of the aggregate model blob.
    /// @param included nodes whose updates went into the aggregate: non-empty, strictly ascending
    ///        by address, each submitted in this round and not flagged.
    /// @dev Emits a {RoundFinalized} event. Loops over `included` only (caller-bounded calldata).
    function finalizeRound(
        uint256 taskId,
        uint64 round,
        bytes32 digest,
        string calldata cid,
        address[] calldata included
    ) external {
        Task storage t = _liveTask(taskId, Mode.Federated);
        _checkTaskCoordinator(t, taskId);
        _checkOpenRound(t, taskId, round);
        _checkModel(digest, cid);
        uint256 count = included.length;
        if (count == 0) revert RegistryNothingIncluded(taskId, round);
        address previous = address(0);
        for (uint256 i = 0; i < count; ++i) {
            address member = included[i];
            if (member <= previous) revert RegistryIncludedNotSorted(i, member);
            Submission storage s = _submissions[taskId][member];
            if (s.round != round) revert RegistryNotSubmitted(taskId, round, member);
            if (s.flagged) revert RegistryUpdateFlagged(taskId, round, member);
            previous = member;
        }
        bytes32 parent = t.head;
        t.head = digest;
        t.accepted = digest;
        t.roundOpen = false;
        emit RoundFinalized(taskId, round, parent, digest, cid, included);
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
            accepted: t.accepted
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
        return round != 0 && _submissions[taskId][account].round == round;
    }

    /// @notice The latest round `account` submitted to in task `taskId` (0 = never), and whether
    ///         that submission is flagged.
    function submission(uint256 taskId, address account) external view returns (uint64 round, bool flagged) {
        Submission storage s = _submissions[taskId][account];
        return (s.round, s.flagged);
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

    function _checkModel(bytes32 digest, string calldata cid) private pure {
        if (digest == bytes32(0)) revert RegistryZeroDigest();
        uint256 length = bytes(cid).length;
        if (length == 0) revert RegistryEmptyCid();
        if (length > MAX_CID_LENGTH) revert RegistryCidTooLong(length, MAX_CID_LENGTH);
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
