"""Early stopping on the nodes' signed validation reports: the rule, its robustness to lying
reporters, a federated task that stops on the embedded chain and audits, and an unjustified stop
that the audit names."""

from __future__ import annotations

import math

import numpy as np
import pytest

from chainfl.agents import stopping as S
from chainfl.agents.reports import NodeReport, parse_stopping
from chainfl.agents.setup import DEFAULT_NETWORK_ROUNDS
from chainfl.agents.threshold import score_histogram
from chainfl.audit import audit_task
from chainfl.errors import ConfigError


def _hist(rng, quality: float, n: int = 60, frauds: int = 10) -> dict:
    """A node's histogram of a model whose log-odds separate the classes by ``quality``."""
    y = np.r_[np.ones(frauds), np.zeros(n - frauds)]
    z = rng.normal(0, 1, n) + np.where(y == 1, quality, -quality)
    return score_histogram(1 / (1 + np.exp(-z)), y)


def test_node_loss_reads_the_class_balanced_log_loss_from_a_histogram():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(20), np.zeros(80)]
    z = rng.normal(0, 2, 100) + np.where(y == 1, 1.5, -1.5)
    exact = 0.5 * (np.logaddexp(0, -z[y == 1]).mean() + np.logaddexp(0, z[y == 0]).mean())
    assert S.node_loss(score_histogram(1 / (1 + np.exp(-z)), y)) == pytest.approx(exact, abs=0.03)
    only_neg = score_histogram(np.full(5, 0.1), np.zeros(5))
    assert S.node_loss(only_neg) == pytest.approx(np.logaddexp(0, math.log(0.1 / 0.9)), abs=0.06)
    assert S.node_loss({"pos": [0] * len(S.CENTRES), "neg": [0] * len(S.CENTRES)}) is None
    assert S.node_loss({"pos": [1], "neg": [1]}) is None          # wrong binning: not a loss


def _points(curve, reporters=10):
    return [(r + 1, loss, reporters) for r, loss in enumerate(curve)]


def test_the_rule_stops_on_a_plateau_and_not_while_improving():
    rule = S.StoppingRule(patience=3, min_delta=0.01, min_rounds=4)
    improving = [1.0 / (1 + r) for r in range(12)]
    assert not S.decide(rule, _points(improving), 10, 12).stop
    plateau = improving[:6] + [improving[5] * 1.001] * 6
    d = S.decide(rule, _points(plateau), 10, 12)
    assert d.stop and d.rounds == tuple(range(7, 13)) and d.reason.startswith(S.STOP_PREFIX)
    assert not S.decide(rule, _points(plateau), 10, 3).stop                       # min_rounds
    # the newest models have no reports yet (nodes report while the next round runs): the
    # window ends at the last model with enough reports
    lagging = _points(plateau) + [(13, None, 0)]
    assert S.decide(rule, lagging, 10, 13).rounds == tuple(range(7, 13))
    # a hole in the reports inside the window: no stop (never on missing evidence)
    holed = _points(plateau)
    holed[8] = (9, holed[8][1], 2)
    assert not S.decide(rule, holed, 10, 12).stop
    assert not S.decide(rule, [], 10, 12).stop


@pytest.mark.parametrize("bad", [{"patience": 0}, {"min_delta": 1.0}, {"min_rounds": 0}, {"min_reporters": 0},
                                 {"patiance": 3}])
def test_bad_settings_name_the_problem(bad):
    with pytest.raises(ConfigError, match="stopping"):
        S.StoppingRule.from_dict(bad)


def test_a_lying_minority_can_neither_force_nor_prevent_a_stop():
    """7 honest reporters, 3 liars (fewer than half): reports of a perfect model cannot keep an
    honest plateau going, reports of an awful one cannot stop a model that still improves."""
    rng = np.random.default_rng(1)
    rule = S.StoppingRule(patience=2, min_delta=0.02, min_rounds=1)

    def points(qualities, liar_quality):
        out = []
        for r, q in enumerate(qualities, 1):
            hists = [_hist(rng, q) for _ in range(7)] + [_hist(rng, liar_quality(r)) for _ in range(3)]
            loss, n = S.robust_loss(hists)
            out.append((r, loss, n))
        return out

    plateau = [2.0, 2.0, 2.0, 2.0]
    assert S.decide(rule, points(plateau, lambda r: 2.0), 10, 4).stop
    assert S.decide(rule, points(plateau, lambda r: 2.0 + 3 * r), 10, 4).stop          # "keeps improving"
    improving = [0.5, 1.0, 2.0, 3.0]
    assert not S.decide(rule, points(improving, lambda r: 0.5), 10, 4).stop
    assert not S.decide(rule, points(improving, lambda r: 5.0 - r), 10, 4).stop         # "got worse"


def test_network_defaults_stop_early_and_given_rounds_run(world):
    spec = world.spec("federated", rounds=None)
    assert spec.rounds == DEFAULT_NETWORK_ROUNDS and spec.stopping == S.StoppingRule().to_dict()
    assert world.spec("federated", rounds=7).stopping == {}
    assert world.spec("federated", rounds=None, model_kind="gbdt",
                      gbdt=dict(n_trees=2, depth=2, concurrent_trees=1), strategy="sum").stopping == {}
    assert world.spec("federated", rounds=7, stopping={"patience": 2}).stopping["patience"] == 2
    with pytest.raises(ConfigError, match="federated"):
        world.spec("chained", rounds=2, stopping={"patience": 2})
    with pytest.raises(ConfigError, match="patience"):
        world.spec("federated", rounds=None, stopping={"patience": -1})


QUICK = dict(patience=1, min_delta=0.5, min_rounds=2)   # any round short of halving the loss: stop


def test_a_federated_task_stops_on_the_reports_and_the_audit_recomputes_it(backend_world):
    world = backend_world
    coordinator = world.coordinator()
    spec = world.spec("federated", rounds=None, stopping=QUICK)
    task_id = coordinator.create_task(spec)
    world.drive(coordinator, [world.agent(i, task_id) for i in range(3)])

    assert world.registry.task(task_id).closed
    finals = world.events(task_id, "RoundFinalized")
    assert 2 <= len(finals) < spec.rounds
    assert coordinator.close_reason.startswith(S.STOP_PREFIX)
    blob = world.store.get(world.events(task_id, "TaskClosed")[0]["evidenceCid"])
    section, reports = parse_stopping(blob)
    assert section["rule"] == spec.stopping and len(section["rounds"]) == 2
    assert {r.node for r in reports} == {a.address for a in world.accounts}
    report = audit_task(world.chain, world.registry, world.store, task_id)
    assert report.ok, report.violations
    assert report.release["stopping"]["stop"] is True
    assert not [w for w in report.warnings if "the spec plans" in w]
    from rich.console import Console

    from chainfl.audit.report import render_terminal, to_html

    console = Console(record=True, width=200)
    render_terminal(report, console)
    assert "Early stop re-decided from the signed reports of rounds" in console.export_text()
    assert "Early stop re-decided" in to_html(report)


def test_an_unjustified_stop_is_a_violation(backend_world, monkeypatch):
    """A coordinator that stopped where the spec's rule does not (here it ignores min_rounds 50):
    the audit re-decides from the signed reports and names the stop, and nothing else."""
    world = backend_world
    coordinator = world.coordinator()
    spec = world.spec("federated", rounds=None, stopping=dict(patience=1, min_delta=0.0, min_rounds=50))
    task_id = coordinator.create_task(spec)
    agents = [world.agent(i, task_id) for i in range(3)]
    real = S.decide

    def forged(rule, points, n, done):
        d = real(S.StoppingRule(**{**rule.to_dict(), "min_rounds": 1, "min_delta": 0.99}), points, n, done)
        return S.StopDecision(d.rounds, d.losses, d.reporters, d.stop, S.STOP_PREFIX + ": (forged)")

    with monkeypatch.context() as m:
        m.setattr(S, "decide", forged)
        world.drive(coordinator, agents)
    assert len(world.events(task_id, "RoundFinalized")) < 50
    report = audit_task(world.chain, world.registry, world.store, task_id)
    assert {v.kind for v in report.violations} == {"stop-unjustified"}, report.violations
    assert "min_rounds" in str(report.violations[0]) or "< 50" in str(report.violations[0])


def test_a_coordinator_that_crashes_after_deciding_to_stop_stops_again_on_restart(world):
    first = world.coordinator()
    spec = world.spec("federated", rounds=None, stopping=QUICK)
    task_id = first.create_task(spec)
    agents = [world.agent(i, task_id) for i in range(3)]

    def crash(*args, **kwargs):
        raise RuntimeError("coordinator killed before closeTask")

    first._finish = crash
    with pytest.raises(RuntimeError, match="killed"):
        world.drive(first, agents)
    assert first._stop is not None and not world.registry.task(task_id).closed
    second = world.coordinator()
    second.attach(task_id)
    world.drive(second, agents)
    assert world.registry.task(task_id).closed and second.close_reason.startswith(S.STOP_PREFIX)
    assert len(world.events(task_id, "RoundFinalized")) == len(first.follower.history.finalized)
    report = audit_task(world.chain, world.registry, world.store, task_id)
    assert report.ok, report.violations


class LyingBox:
    """What a node with its own client code can send: its reports rewritten (and re-signed with its
    key) to claim a model that keeps getting better — every row scored right, more so each round."""

    def __init__(self, box, account):
        self.box, self.account, self.sent = box, account, 0

    def put(self, report: NodeReport) -> None:
        self.sent += 1
        fake = {}
        for model, h in report.histograms.items():
            n = sum(h["pos"]) + sum(h["neg"])
            k = min(len(h["pos"]) - 1, len(h["pos"]) // 2 + 10 * self.sent)
            pos, neg = [0] * len(h["pos"]), [0] * len(h["neg"])
            pos[k], neg[len(neg) - 1 - k] = n // 2 + 1, n // 2 + 1
            fake[model] = {**h, "pos": pos, "neg": neg}
        self.box.put(NodeReport(report.task_id, report.node, fake).signed(self.account))

    def __getattr__(self, name):
        return getattr(self.box, name)


def test_lying_reporters_cannot_keep_a_converged_task_running(world5):
    """2 of 5 nodes claim ever-better models in their signed reports: the median of the honest
    three still ends the task, the audit re-decides the same stop and blames nobody."""
    world = world5
    coordinator = world.coordinator()
    spec = world.spec("federated", rounds=None, stopping=QUICK)
    task_id = coordinator.create_task(spec)
    agents = [world.agent(i, task_id) for i in range(3)] + [
        world.agent(i, task_id, reports=LyingBox(world.box, world.accounts[i])) for i in (3, 4)]
    world.drive(coordinator, agents, max_steps=400)

    assert coordinator.close_reason.startswith(S.STOP_PREFIX)
    assert len(world.events(task_id, "RoundFinalized")) < spec.rounds
    liars = {world.accounts[i].address for i in (3, 4)}
    blob = world.store.get(world.events(task_id, "TaskClosed")[0]["evidenceCid"])
    _, reports = parse_stopping(blob)
    assert liars <= {r.node for r in reports}            # their reports were read, and outvoted
    report = audit_task(world.chain, world.registry, world.store, task_id)
    assert report.ok, report.violations
    assert not report.misbehaving()


def test_an_oversized_report_is_ignored():
    from eth_account import Account

    from chainfl.agents.reports import REPORT_BYTES_CAP, verified_reports

    acct = Account.create()
    h = score_histogram([0.2, 0.9], [0, 1])
    fine = NodeReport(1, acct.address, {"0xaa": h}).signed(acct)
    padded = NodeReport(1, acct.address, {"0xaa": {**h, "pad": "x" * REPORT_BYTES_CAP}}).signed(acct)
    assert verified_reports([fine], 1, [acct.address], "0xaa") == [fine]
    assert verified_reports([padded], 1, [acct.address], "0xaa") == []


def _signed_report(acct, model, hist):
    return NodeReport(1, acct.address, {model: hist}).signed(acct)


@pytest.mark.parametrize("bad", [7, {"bins": 240, "range": 12.0, "pos": "xxx", "neg": []},
                                 "ints", "huge", "floats", "bools", "negative"])
def test_malformed_histograms_never_count_and_never_crash(bad):
    from eth_account import Account

    from chainfl.agents.reports import verified_reports

    good = score_histogram([0.2, 0.9, 0.4], [0, 1, 0])
    n = len(good["pos"])
    bad = {"ints": {**good, "pos": good["pos"][:-1]},
           "huge": {**good, "pos": [10**400] + good["pos"][1:]},
           "floats": {**good, "pos": [1e308, 1e308] + good["pos"][2:]},
           "bools": {**good, "pos": [True] * n},
           "negative": {**good, "neg": [-1] + good["neg"][1:]}}.get(bad, bad) if isinstance(bad, str) else bad
    assert S.node_loss(bad) is None
    honest = [Account.create() for _ in range(3)]
    liar = Account.create()
    reports = [_signed_report(a, "0xaa", good) for a in honest] + [_signed_report(liar, "0xaa", bad)]
    used = verified_reports(reports, 1, [a.address for a in honest + [liar]], "0xaa")
    assert {r.node for r in used} == {a.address for a in honest}
    loss, n_used = S.robust_loss([r.histograms["0xaa"] for r in used])
    assert n_used == 3 and math.isfinite(loss)


def test_an_unsigned_nan_report_file_is_ignored(tmp_path):
    import json

    from eth_account import Account

    from chainfl.agents.reports import DirectoryReportBox, verified_reports

    box = DirectoryReportBox(tmp_path)
    acct = Account.create()
    box.put(_signed_report(acct, "0x" + "ab" * 32, score_histogram([0.2, 0.9], [0, 1])))
    folder = tmp_path / "task-1"
    forged = {"task_id": 1, "node": acct.address, "signature": "0x00",
              "histograms": {"0x" + "ab" * 32: {"bins": 240, "range": 12.0, "pos": [float("nan")], "neg": []}}}
    (folder / ("abababababababab-" + acct.address.lower() + "-forged.json")).write_text(json.dumps(forged))
    used = verified_reports(box.reports_for(1, "0x" + "ab" * 32), 1, [acct.address], "0x" + "ab" * 32)
    assert len(used) == 1 and used[0].verify()


def test_the_audit_refuses_evidence_that_does_not_fit_the_rounds():
    from eth_account import Account

    rule = S.StoppingRule(patience=1, min_delta=0.5, min_rounds=1)
    accts = [Account.create() for _ in range(3)]
    nodes = [a.address for a in accts]
    models = {r: "0x" + f"{r:02x}" * 32 for r in (1, 2, 3, 4)}
    flat = score_histogram([0.3, 0.6, 0.4, 0.7], [0, 1, 0, 1])
    reports = [_signed_report(a, models[r], flat) for a in accts for r in (1, 2, 3, 4)]

    def check(rounds, finalized=models, rule=rule):
        section = {"rule": rule.to_dict(), "rounds": rounds, "models": [finalized.get(r, "0x00") for r in rounds]}
        return S.check_evidence(section, reports, rule=rule, task_id=1, nodes=nodes, finalized_models=finalized)[1]

    assert check([2, 3]) is None                                    # a plateau: the stop holds
    assert "newest" in check([3, 4])                                # the newest model's reports are not all in
    assert "consecutive" in check([1, 3])
    assert "not that round's aggregate" in S.check_evidence(
        {"rule": rule.to_dict(), "rounds": [2, 3], "models": [models[2], models[1]]}, reports, rule=rule,
        task_id=1, nodes=nodes, finalized_models=models)[1]
    strict = S.StoppingRule(patience=1, min_delta=0.0, min_rounds=9)
    assert "does not justify" in check([2, 3], rule=strict)
    with_abandoned = {1: models[1], 3: models[3], 4: models[4], 6: models[2]}    # rounds 2, 5 abandoned
    reports.extend(_signed_report(a, models[2], flat) for a in accts)
    assert check([3, 4], finalized=with_abandoned) is None          # consecutive *finalized* rounds


class InflatingBox(LyingBox):
    """A node whose reports claim 10^6 validation rows, all scored as the most confident frauds:
    unbounded, its histogram alone would set the release threshold."""

    def put(self, report: NodeReport) -> None:
        fake = {}
        for model, h in report.histograms.items():
            pos = [0] * len(h["pos"])
            pos[len(pos) // 2] = 10**6
            fake[model] = {**h, "pos": pos, "neg": [0] * len(h["neg"])}
        self.box.put(NodeReport(report.task_id, report.node, fake).signed(self.account))


def test_a_report_counting_more_rows_than_its_node_committed_is_left_out_of_the_threshold(world):
    coordinator = world.coordinator(report_timeout=0)   # the liar's report never counts: do not wait for it
    spec = world.spec("federated", rounds=2)
    task_id = coordinator.create_task(spec)
    liar = world.accounts[2]
    agents = [world.agent(i, task_id) for i in range(2)] + [
        world.agent(2, task_id, reports=InflatingBox(world.box, liar))]
    world.drive(coordinator, agents)

    assert coordinator.reported_nodes == 2                       # the two honest nodes' histograms
    blob = world.store.get(world.events(task_id, "TaskClosed")[0]["evidenceCid"])
    assert liar.address not in blob.decode()
    report = audit_task(world.chain, world.registry, world.store, task_id)
    assert report.ok, report.violations


def test_a_chained_checker_whose_report_cannot_count_does_not_get_the_head_released(world):
    """The final checker reports an inflated histogram on the last hand-off: it does not count as
    the check (nor in the threshold), so after the turn timeout the turn moves on and the release
    is a checked model; the audit blames nobody."""
    spec = world.spec("chained", rounds=1)
    coordinator = world.coordinator(report_timeout=0)
    task_id = coordinator.create_task(spec)
    liar = world.accounts[0]           # hand-offs 0, 1, 2: the turn comes back to node 0 to check
    agents = [world.agent(0, task_id, reports=InflatingBox(world.box, liar)), world.agent(1, task_id),
              world.agent(2, task_id)]
    for _ in range(300):
        if coordinator.step() == "done":
            break
        for a in agents:
            a.step()
        if world.registry.task(task_id).seq >= spec.total_handoffs:
            world.chain.advance_time(spec.turn_seconds + 1)     # the checker's turn runs out
    assert world.registry.task(task_id).closed
    report = audit_task(world.chain, world.registry, world.store, task_id)
    assert report.ok, report.violations
    closed = world.events(task_id, "TaskClosed")[0]
    if closed["evidenceCid"]:
        assert liar.address not in world.store.get(closed["evidenceCid"]).decode()   # never in the threshold
    assert coordinator.reported_nodes <= 2


def test_a_task_recorded_before_the_row_bound_keeps_its_rules(world):
    """A spec without the report-rows marker (written by an earlier chainfl) is coordinated and
    audited as then: the inflated report counts, and the audit does not call it invalid."""
    from dataclasses import replace

    from chainfl.agents.reports import REPORT_ROWS

    spec = world.spec("federated", rounds=2)
    old = replace(spec, limits={k: v for k, v in spec.limits.items() if k != REPORT_ROWS})
    coordinator = world.coordinator(report_timeout=0)
    task_id = coordinator.create_task(old)
    liar = world.accounts[2]
    agents = [world.agent(i, task_id) for i in range(2)] + [
        world.agent(2, task_id, reports=InflatingBox(world.box, liar))]
    world.drive(coordinator, agents)
    assert coordinator.reported_nodes == 3
    report = audit_task(world.chain, world.registry, world.store, task_id)
    assert report.ok, report.violations


def test_a_gbdt_task_can_stop_early_too_and_audits(world):
    """--stop-patience on a gbdt task: the same rule on the same reports; the release is the
    ensemble so far (finished trees score), recomputed by the audit like every round."""
    coordinator = world.coordinator()
    spec = world.spec("federated", rounds=None, model_kind="gbdt", strategy="sum",
                      gbdt=dict(n_trees=12, depth=2, concurrent_trees=2), stopping=QUICK)
    task_id = coordinator.create_task(spec)
    world.drive(coordinator, [world.agent(i, task_id) for i in range(3)], max_steps=400)
    assert coordinator.close_reason.startswith(S.STOP_PREFIX)
    assert len(world.events(task_id, "RoundFinalized")) < spec.rounds
    report = audit_task(world.chain, world.registry, world.store, task_id)
    assert report.ok, report.violations
