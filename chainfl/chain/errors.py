"""Typed Python errors for the registry's Solidity custom errors, identical on every backend.

Every backend raises :class:`chainfl.errors.TransactionError` with ``revert_data`` (selector +
ABI-encoded arguments) when a transaction reverts; :func:`decode_revert` turns that payload into
the subclass of :class:`chainfl.errors.ContractError` named after the Solidity error, with its
arguments by name in ``error_args`` and a message that says what went wrong and what to do.
``tests/chain/test_registry.py`` checks that every error in the ABI has a class here.
"""

from __future__ import annotations

from eth_utils import keccak, to_checksum_address

from chainfl.errors import ChainflError, ContractError

__all__ = ["CompileError", "ArtifactError", "CONTRACT_ERRORS", "decode_revert", "error_selectors"]


class CompileError(ChainflError):
    """The registry contract does not compile, or the compiler could not run."""


class ArtifactError(ChainflError):
    """The committed registry artifact is missing, unreadable or stale."""


class _RegistryError(ContractError):
    """Base of the generated-by-hand classes below: formats ``template`` with the decoded args."""

    template = "{error_name}{args}"

    @classmethod
    def from_args(cls, args: dict) -> "_RegistryError":
        shown = {k: _show(v) for k, v in args.items()}
        try:
            text = cls.template.format(**shown)
        except (KeyError, IndexError):
            text = f"{cls.__name__}({', '.join(f'{k}={v}' for k, v in shown.items())})"
        return cls(f"{cls.__name__}: {text}", error_name=cls.__name__, error_args=args)


def _show(value):
    if isinstance(value, (bytes, bytearray)):
        return "0x" + bytes(value).hex()
    if isinstance(value, str) and value.startswith("0x") and len(value) == 42:
        return to_checksum_address(value)
    return value


# --- access control ------------------------------------------------------------------------------
class RegistryNotAdmin(_RegistryError):
    template = "{caller} is not the registry admin; send this from the admin account (Registry.admin())."


class RegistryNotMember(_RegistryError):
    template = "{account} is not a registered node; ask the admin to add it (Registry.add_node)."


class RegistryNotCoordinator(_RegistryError):
    template = "{caller} lacks the coordinator role; ask the admin to grant it (Registry.set_coordinator)."


class RegistryNotTaskCoordinator(_RegistryError):
    template = ("task {taskId} is run by {coordinator}, not {caller}; send this from the task's "
                "coordinator account.")


class RegistryZeroAddress(_RegistryError):
    template = "the zero address is not a valid account here; pass a real account address."


class RegistryAlreadyMember(_RegistryError):
    template = "{account} is already a registered node; nothing to do."


# --- tasks ---------------------------------------------------------------------------------------
class RegistryUnknownTask(_RegistryError):
    template = "there is no task {taskId}; use an id from 1 to Registry.task_count()."


class RegistryWrongMode(_RegistryError):
    template = ("task {taskId} has mode {mode} (1=chained, 2=federated), which does not support this "
                "call; use the chained calls (handoffs) or federated calls (rounds) that match the task.")


class RegistryTaskClosed(_RegistryError):
    template = "task {taskId} is closed; create a new task to keep training."


class RegistryZeroDigest(_RegistryError):
    template = "the digest is zero; pass sha256(blob) of the stored model."


class RegistryEmptyCid(_RegistryError):
    template = "the CID is empty; store the blob first and pass the CID the store returned."


class RegistryCidTooLong(_RegistryError):
    template = "the CID has {length} bytes, more than the {maxLength} allowed; pass a CIDv1 string."


class RegistryZeroSamples(_RegistryError):
    template = "samples is 0; report the number of training samples actually used (at least 1)."


class RegistryNoNodes(_RegistryError):
    template = "a task needs at least one node; pass the task's node addresses."


class RegistryTooManyNodes(_RegistryError):
    template = ("{count} nodes is more than the {maxCount} one task can have; split the nodes over "
                "several tasks.")


class RegistryDuplicateTaskNode(_RegistryError):
    template = "{account} is listed twice in the task's node set; list each node once."


class RegistryNotTaskNode(_RegistryError):
    template = ("{account} is not one of task {taskId}'s nodes (its node set is fixed at creation, see "
                "the TaskCreated event); only the task's nodes may submit, hand off or be handed to.")


class RegistryReasonTooLong(_RegistryError):
    template = "the reason has {length} bytes, more than the {maxLength} allowed; shorten it."


# --- chained mode --------------------------------------------------------------------------------
class RegistryNotYourTurn(_RegistryError):
    template = ("task {taskId}: it is {expected}'s turn, not {caller}'s; wait until a handoff names "
                "you as next (or the coordinator skips to you).")


class RegistryStaleParent(_RegistryError):
    template = ("task {taskId}: parent {parent} is not the current head {head}; fetch the head, "
                "train from it and submit again.")


class RegistryUnchangedModel(_RegistryError):
    template = "task {taskId}: the new model {digest} equals its parent; train before handing off."


class RegistryNothingToReject(_RegistryError):
    template = ("task {taskId}: {digest} is not an unaccepted head (head {head}, accepted {accepted}); "
                "only the latest, not yet accepted handoff can be rejected.")


class RegistryHandoffToSelf(_RegistryError):
    template = ("task {taskId}: {node} cannot hand the model to itself; hand it to the next node of the "
                "task so that another node checks it.")


class RegistrySkipToProducer(_RegistryError):
    template = ("task {taskId}: the head is {producer}'s unaccepted handoff, so the turn cannot go to "
                "{producer}; skip to another node, which checks the head.")


# --- federated mode ------------------------------------------------------------------------------
class RegistryRoundStillOpen(_RegistryError):
    template = "task {taskId}: round {round} is still open; finalize or abandon it before opening the next."


class RegistryBadDeadline(_RegistryError):
    template = "deadline {deadline} is not after the current block time {timestamp}; pass a future unix time."


class RegistryWrongRound(_RegistryError):
    template = "task {taskId}: round {round} is not the current round {currentRound}; use the current round."


class RegistryRoundNotOpen(_RegistryError):
    template = ("task {taskId}: round {round} is not open (finalized or abandoned); wait for the "
                "coordinator to open the next.")


class RegistryDeadlinePassed(_RegistryError):
    template = ("task {taskId}: round {round} closed for submissions at {deadline} (block time is "
                "{timestamp}); submit to the next round.")


class RegistryAlreadySubmitted(_RegistryError):
    template = "task {taskId}: {node} already submitted to round {round}; one update per node and round."


class RegistryNotSubmitted(_RegistryError):
    template = "task {taskId}: {node} submitted no update to round {round}; decide only on submitters."


class RegistryNothingIncluded(_RegistryError):
    template = ("task {taskId}: round {round} cannot be finalized with no included update; end it "
                "with abandonRound (Registry.abandon_round) instead.")


class RegistryNodesNotSorted(_RegistryError):
    template = ("decision.nodes[{index}] = {node} is not above the previous address; list the round's "
                "submitters sorted ascending without duplicates.")


class RegistryDecisionCount(_RegistryError):
    template = ("task {taskId}: the decision on round {round} names {decided} node(s) (or has as many "
                "codes) but {submitted} update(s) were submitted; decide on every submitted update once.")


class RegistryBadDecision(_RegistryError):
    template = "decision code {code} at index {index} is not 0 (included), 1 (excluded) or 2 (flagged)."


class RegistryReasonCount(_RegistryError):
    template = "the decision flags {flagged} update(s) but gives {reasons} reason(s); give one per flag."


class RegistryIncludedInAbandon(_RegistryError):
    template = ("decision.nodes[{index}] = {node} is marked included, but an abandoned round has no "
                "aggregate; exclude or flag it, or finalize the round instead.")


#: Solidity error name -> Python class
CONTRACT_ERRORS: dict[str, type[_RegistryError]] = {
    cls.__name__: cls for cls in _RegistryError.__subclasses__()
}


def _signature(entry: dict) -> str:
    return f"{entry['name']}({','.join(_abi_type(i) for i in entry['inputs'])})"


def _abi_type(param: dict) -> str:
    if param["type"].startswith("tuple"):
        inner = ",".join(_abi_type(c) for c in param["components"])
        return f"({inner}){param['type'][5:]}"
    return param["type"]


def error_selectors(abi: list[dict]) -> dict[bytes, dict]:
    """``{4-byte selector: ABI entry}`` for every custom error in ``abi``."""
    return {keccak(text=_signature(e))[:4]: e for e in abi if e.get("type") == "error"}


def decode_revert(revert_data: bytes, selectors: dict[bytes, dict]) -> ContractError | None:
    """The typed error for ``revert_data``, or ``None`` if it is not one of the registry's errors."""
    from eth_abi import decode
    from eth_abi.exceptions import DecodingError

    data = bytes(revert_data or b"")
    entry = selectors.get(data[:4]) if len(data) >= 4 else None
    if entry is None:
        return None
    types = [_abi_type(i) for i in entry["inputs"]]
    try:
        values = decode(types, data[4:])
    except (DecodingError, ValueError):
        return None
    args = {}
    for param, value in zip(entry["inputs"], values):
        if param["type"] == "address":
            value = to_checksum_address(value)
        args[param["name"]] = value
    cls = CONTRACT_ERRORS.get(entry["name"])
    if cls is None:
        return ContractError(f"{entry['name']}({args})", error_name=entry["name"], error_args=args)
    return cls.from_args(args)
