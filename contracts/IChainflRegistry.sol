// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title chainfl registry interface: types, custom errors and events
/// @notice Everything an auditor needs is in the events; storage keeps only what the contract
///         itself must check. Task ids start at 1. Digests are sha256 of the blob (bytes32),
///         CIDs are CIDv1 strings.
interface IChainflRegistry {
    /// @notice How models move in a task. 0 is reserved for "no such task".
    enum Mode {
        None,
        Chained,
        Federated
    }

    /// @notice Read-only view of a task.
    struct TaskView {
        Mode mode;
        bool closed;
        bool roundOpen; // federated: the current round accepts updates
        address coordinator; // creator of the task
        address expected; // chained: the node whose turn it is
        address headNode; // chained: producer of `head` while it is not yet accepted, else 0
        uint64 seq; // chained: handoffs recorded; federated: current (last opened) round
        uint64 deadline; // federated: deadline (unix time) of the current round
        bytes32 head; // chained: latest model; federated: current global model
        bytes32 accepted; // chained: last accepted model; federated: equals head
        uint16 nodeCount; // the task's node set, fixed at creation
        uint32 roundSubmissions; // federated: updates submitted to the current round
    }

    /// @notice Read-only view of an account's role and counters.
    struct NodeView {
        bool member;
        bool coordinator;
        uint32 handoffs;
        uint32 updates;
        uint32 rejectionsIssued;
        uint32 rejectionsReceived;
        uint32 flags;
    }

    /// @notice How a federated round ends: one entry per submitted update. `nodes` lists every
    ///         node that submitted to the round, strictly ascending by address; `codes[i]` is the
    ///         decision on `nodes[i]` (0 included in the aggregate, 1 excluded without blame — not
    ///         selected by the rule, e.g. Krum —, 2 flagged as suspicious); `reasons` holds one
    ///         reason per flagged node, in list order. `evidenceDigest`/`evidenceCid` name an
    ///         optional blob with the decision's off-chain inputs (e.g. peer score reports), or
    ///         0 / "" for none.
    struct Decision {
        address[] nodes;
        bytes codes;
        string[] reasons;
        bytes32 evidenceDigest;
        string evidenceCid;
    }

    // --- errors: access control -------------------------------------------------------------
    error RegistryNotAdmin(address caller);
    error RegistryNotMember(address account);
    error RegistryNotCoordinator(address caller);
    error RegistryNotTaskCoordinator(uint256 taskId, address coordinator, address caller);
    error RegistryZeroAddress();
    error RegistryAlreadyMember(address account);

    // --- errors: tasks ------------------------------------------------------------------------
    error RegistryUnknownTask(uint256 taskId);
    error RegistryWrongMode(uint256 taskId, uint8 mode);
    error RegistryTaskClosed(uint256 taskId);
    error RegistryZeroDigest();
    error RegistryEmptyCid();
    error RegistryCidTooLong(uint256 length, uint256 maxLength);
    error RegistryZeroSamples();
    error RegistryNoNodes();
    error RegistryTooManyNodes(uint256 count, uint256 maxCount);
    error RegistryDuplicateTaskNode(address account);
    error RegistryNotTaskNode(uint256 taskId, address account);
    error RegistryReasonTooLong(uint256 length, uint256 maxLength);

    // --- errors: chained mode -----------------------------------------------------------------
    error RegistryNotYourTurn(uint256 taskId, address expected, address caller);
    error RegistryStaleParent(uint256 taskId, bytes32 head, bytes32 parent);
    error RegistryUnchangedModel(uint256 taskId, bytes32 digest);
    error RegistryNothingToReject(uint256 taskId, bytes32 head, bytes32 accepted, bytes32 digest);
    error RegistryHandoffToSelf(uint256 taskId, address node);
    error RegistrySkipToProducer(uint256 taskId, address producer);

    // --- errors: federated mode ---------------------------------------------------------------
    error RegistryRoundStillOpen(uint256 taskId, uint256 round);
    error RegistryBadDeadline(uint256 deadline, uint256 timestamp);
    error RegistryWrongRound(uint256 taskId, uint256 currentRound, uint256 round);
    error RegistryRoundNotOpen(uint256 taskId, uint256 round);
    error RegistryDeadlinePassed(uint256 taskId, uint256 round, uint256 deadline, uint256 timestamp);
    error RegistryAlreadySubmitted(uint256 taskId, uint256 round, address node);
    error RegistryNotSubmitted(uint256 taskId, uint256 round, address node);
    error RegistryNothingIncluded(uint256 taskId, uint256 round);
    error RegistryNodesNotSorted(uint256 index, address node);
    error RegistryDecisionCount(uint256 taskId, uint256 round, uint256 decided, uint256 submitted);
    error RegistryBadDecision(uint256 index, uint8 code);
    error RegistryReasonCount(uint256 flagged, uint256 reasons);
    error RegistryIncludedInAbandon(uint256 index, address node);

    // --- events: membership -------------------------------------------------------------------
    event AdminTransferred(address indexed previousAdmin, address indexed newAdmin);
    event NodeAdded(address indexed node, address indexed by);
    event NodeRemoved(address indexed node, address indexed by);
    event CoordinatorGranted(address indexed account, address indexed by);
    event CoordinatorRevoked(address indexed account, address indexed by);

    // --- events: tasks ------------------------------------------------------------------------
    /// @dev `nodes` is the task's node set (chained: the visiting order, `nodes[0]` goes first).
    event TaskCreated(
        uint256 indexed taskId,
        address indexed coordinator,
        Mode mode,
        bytes32 configDigest,
        string configCid,
        bytes32 initialDigest,
        string initialCid,
        address[] nodes
    );
    event TaskClosed(
        uint256 indexed taskId,
        address indexed by,
        bytes32 releaseDigest,
        string releaseCid,
        string reason,
        bytes32 evidenceDigest,
        string evidenceCid
    );

    // --- events: chained mode -----------------------------------------------------------------
    event HandoffRecorded(
        uint256 indexed taskId,
        address indexed node,
        address indexed next,
        uint64 seq,
        bytes32 parent,
        bytes32 digest,
        string cid,
        uint64 samples,
        uint32 lossE6
    );
    event HandoffRejected(
        uint256 indexed taskId,
        address indexed node,
        address indexed producer,
        bytes32 digest,
        bytes32 restored,
        string reason
    );
    event TurnSkipped(uint256 indexed taskId, address indexed skipped, address indexed next, address by);

    // --- events: federated mode ---------------------------------------------------------------
    event RoundOpened(uint256 indexed taskId, uint64 indexed round, bytes32 globalModel, uint64 deadline);
    event UpdateSubmitted(
        uint256 indexed taskId,
        uint64 indexed round,
        address indexed node,
        bytes32 parent,
        bytes32 digest,
        string cid,
        uint64 samples,
        uint32 lossE6
    );
    event UpdateFlagged(uint256 indexed taskId, uint64 indexed round, address indexed node, string reason);
    event RoundFinalized(
        uint256 indexed taskId,
        uint64 indexed round,
        bytes32 parent,
        bytes32 digest,
        string cid,
        address[] included,
        address[] excluded,
        bytes32 evidenceDigest,
        string evidenceCid
    );
    event RoundAbandoned(
        uint256 indexed taskId,
        uint64 indexed round,
        bytes32 globalModel,
        address[] excluded,
        string reason,
        bytes32 evidenceDigest,
        string evidenceCid
    );
}
