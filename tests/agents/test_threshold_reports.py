import hashlib
import os

import numpy as np
from eth_account import Account
from sklearn.metrics import f1_score

from chainfl.agents.reports import DirectoryReportBox, MemoryReportBox, NodeReport, histograms_for
from chainfl.agents.threshold import EDGES, merge_histograms, score_histogram, threshold_from_histogram


def test_histogram_threshold_is_the_best_pooled_f1_over_bin_edges():
    rng = np.random.default_rng(0)
    y = (rng.random(3000) < 0.2).astype(int)
    scores = 1 / (1 + np.exp(-(rng.normal(size=3000) + 2.5 * (2 * y - 1))))
    # three "nodes" report their own histograms only
    parts = np.array_split(np.arange(3000), 3)
    merged = merge_histograms([score_histogram(scores[p], y[p]) for p in parts])
    threshold, f1 = threshold_from_histogram(merged)
    # brute force on the pooled scores over the same candidate edges
    best = max(f1_score(y, (scores >= e).astype(int), zero_division=0) for e in EDGES)
    assert threshold in EDGES
    assert abs(f1 - best) < 1e-12
    assert abs(f1_score(y, (scores >= threshold).astype(int)) - best) < 1e-12
    assert sum(merged["pos"]) == y.sum() and sum(merged["neg"]) == (1 - y).sum()


def test_no_positives_gives_default_threshold():
    assert threshold_from_histogram(score_histogram(np.array([0.1, 0.9]), np.array([0, 0]))) == (0.5, 0.0)


def test_reports_are_signed_and_forgeries_ignored(tmp_path):
    alice, mallory = Account.create(), Account.create()
    h = score_histogram(np.array([0.2, 0.8]), np.array([0, 1]))
    good = NodeReport(1, alice.address, {"0xaa": h}).signed(alice)
    forged = NodeReport(1, alice.address, {"0xaa": h}, signature=NodeReport(1, mallory.address, {"0xaa": h})
                        .signed(mallory).signature)
    for box in (MemoryReportBox(), DirectoryReportBox(tmp_path)):
        box.put(forged)
        assert histograms_for(box.reports(1), 1, [alice.address], "0xaa") == []
        box.put(good)
        assert histograms_for(box.reports(1), 1, [alice.address], "0xaa") == [h]
        assert histograms_for(box.reports(1), 1, [mallory.address], "0xaa") == []   # not a task node
        assert histograms_for(box.reports(2), 2, [alice.address], "0xaa") == []


def test_a_directory_box_files_a_multi_model_report_under_each_model_and_reads_only_those(tmp_path, monkeypatch):
    from eth_account import Account

    from chainfl.agents.threshold import score_histogram

    acct = Account.create()
    h = score_histogram([0.1, 0.8], [0, 1])
    head, accepted, other = "0x" + "aa" * 32, "0x" + "bb" * 32, "0x" + "cc" * 32
    box = DirectoryReportBox(tmp_path)
    box.put(NodeReport(1, acct.address, {head: h, accepted: h}).signed(acct))
    box.put(NodeReport(1, acct.address, {other: h}).signed(acct))
    read = []
    original = box._read
    monkeypatch.setattr(box, "_read", lambda task, pattern, *rest: read.append(pattern) or original(task, pattern, *rest))
    assert [r.node for r in box.reports_for(1, accepted)] == [acct.address]
    assert [r.node for r in box.reports_for(1, head)] == [acct.address]
    assert read == ["bb" * 8 + "-*.json", "aa" * 8 + "-*.json"]          # never the whole directory
    assert len(box.reports(1)) == 2                                      # the two-model report once


def test_a_directory_box_reads_few_files_per_node_and_model_and_only_the_members(tmp_path):
    """Anyone who can write the directory may flood it: with a node's name (at most
    FILES_PER_NODE files per node and model are read, the lowest body hashes first — the one
    verified_reports keeps) or under invented names (never opened once the reader names the
    task's members). What a box keeps parsed stays bounded however many rounds go by."""
    from chainfl.agents.reports import CACHED_PATTERNS, FILES_PER_NODE, verified_reports

    alice, bob = Account.create(), Account.create()
    model = "0x" + "ab" * 32
    box = DirectoryReportBox(tmp_path)
    signed = [NodeReport(1, alice.address, {model: score_histogram(np.array([0.1 * k % 1, 0.9]), np.array([0, 1]))})
              .signed(alice) for k in range(1, 13)]
    for r in signed:
        box.put(r)
    folder = tmp_path / "task-1"
    for k in range(40):                                   # a flood under invented names
        (folder / f"{model[2:18]}-0xinvented{k:02d}-{k:016x}.json").write_text("{not json")
    os.mkfifo(folder / f"{model[2:18]}-0xfifo-1.json")
    got = box.reports_for(1, model, [alice.address, bob.address])
    assert len(got) == FILES_PER_NODE
    lowest = min(signed, key=lambda r: hashlib.sha256(r.body()).digest())
    assert verified_reports(got, 1, [alice.address], model) == [lowest]
    assert all(alice.address.lower() in name for name, _, _ in box._cache[(1, f"{model[2:18]}-*.json")])
    for round_ in range(10):
        box.peer_reports(1, round_, [alice.address])
    assert len(box._cache) <= CACHED_PATTERNS


def test_a_node_that_re_sends_its_peer_report_keeps_one_file_and_the_newest_is_read(tmp_path):
    """A node re-sends its round's peer report each time more updates arrive; were the old files
    kept, more than FILES_PER_NODE re-sends would push its newest report out of what is read."""
    from chainfl.agents.peerreports import PeerReport
    from chainfl.agents.reports import FILES_PER_NODE

    alice = Account.create()
    box = DirectoryReportBox(tmp_path)
    base = "0x" + "11" * 32
    sent = []
    for k in range(FILES_PER_NODE + 4):
        scores = {"0x" + f"{j:02x}" * 32: [0.0, 0.0, -0.1 * j, 1.0, 0.0, 0.0] for j in range(k + 1)}
        sent.append(PeerReport(1, 2, base, alice.address, scores).signed(alice))
        box.put_peer(sent[-1])
    assert len(list((tmp_path / "task-1").glob("peer-2-*.json"))) == 1
    assert box.peer_reports(1, 2, [alice.address]) == [sent[-1]]
