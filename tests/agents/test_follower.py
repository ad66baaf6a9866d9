from chainfl.agents.follower import EventFollower
from chainfl.chain.registry import Mode


def test_follower_reads_bounded_ranges_once_and_keeps_the_cids(world):
    reg, admin = world.registry, world.coordinator_account
    reg.set_coordinator(admin.address, True, admin)
    for a in world.accounts:
        reg.add_node(a.address, admin)
    start = world.chain.block_number()
    d = [bytes([i]) * 32 for i in range(1, 6)]
    task_id = reg.create_task(d[0], "bafkcfg", Mode.CHAINED, d[1], "bafkinit", world.accounts[0].address, admin)
    reg.record_handoff(task_id, d[1], d[2], "bafk2", 5, 0.5, world.accounts[1].address, world.accounts[0])
    reg.record_handoff(task_id, d[2], d[3], "bafk3", 5, 0.4, world.accounts[2].address, world.accounts[1])
    other = reg.create_task(d[0], "bafkcfg", Mode.FEDERATED, d[4], "bafkother", None, admin)
    latest = world.chain.block_number()

    follower = EventFollower(reg, task_id, start_block=start, max_blocks=2)
    seen, cursors = [], []
    while follower.cursor <= latest:
        before = follower.cursor
        seen += follower.poll()
        cursors.append((before, follower.cursor))

    assert all(after - before <= 2 for before, after in cursors)          # bounded per poll
    assert [e.name for e in seen] == ["TaskCreated", "HandoffRecorded", "HandoffRecorded"]   # once each
    assert follower.poll() == []                                          # nothing new: nothing re-read
    h = follower.history
    assert h.created["configCid"] == "bafkcfg" and h.created_block >= start
    assert h.cid_of(d[1]) == "bafkinit" and h.cid_of(d[3]) == "bafk3"
    assert all(e.args["taskId"] == task_id for e in seen) and other != task_id
    assert d[4] not in h.cids                                            # another task's model
