"""The worker's queue: what supersedes what, and what a note-off takes back."""

import numpy as np
import pytest

from server.delivery import Requester
from server.worker import Job, JobQueue, QueueFull


def job(kind: str, client: object, request_id: int, **params) -> Job:
    return Job(kind, "/" + kind, [Requester(client, request_id, 0.0)], params)


def test_notes_never_supersede_notes_but_do_supersede_other_sampling():
    q, me = JobQueue(), object()
    assert q.put(job("generate", me, 1)) == []
    superseded = q.put(job("note", me, 2, pitch=60, velocity=100))
    assert [j.ids() for j in superseded] == [[1]]  # the generate's result would be replaced by the note's
    assert q.put(job("note", me, 3, pitch=62, velocity=100)) == []
    assert q.put(job("note", me, 4, pitch=64, velocity=100)) == []
    assert [j.ids() for j in q.pending] == [[2], [3], [4]]
    assert [j.ids() for j in q.put(job("generate", me, 5))] == [[2], [3], [4]]  # a generate replaces them all


def test_a_note_off_takes_back_its_clients_waiting_note_of_that_pitch_only():
    q, me, other = JobQueue(), object(), object()
    for request_id, (client, pitch) in enumerate([(me, 60), (me, 62), (other, 60)], start=1):
        q.put(job("note", client, request_id, pitch=pitch, velocity=100))
    assert [j.ids() for j in q.cancel_notes(me, 60)] == [[1]]
    assert [j.ids() for j in q.pending] == [[2], [3]]


def test_one_clients_work_never_supersedes_or_merges_with_anothers():
    q, me, other = JobQueue(), object(), object()
    mask = np.zeros((64, 8), bool)
    q.put(job("inpaint", other, 1, layer="bottom", mask=mask.copy()))
    q.put(job("render", other, 2))
    assert q.put(job("generate", me, 3)) == []  # other's inpaint is not mine to replace
    q.put(job("render", me, 4))  # does not merge into other's render
    q.put(job("inpaint", me, 5, layer="bottom", mask=mask.copy()))
    q.put(job("inpaint", me, 6, layer="bottom", mask=mask.copy()))  # merges with my own
    assert [j.ids() for j in q.pending] == [[1], [2], [3], [4], [5, 6]]
    assert [j.ids() for j in q.put(job("generate", me, 7))] == [[3], [5, 6]]


def test_exports_wait_in_their_own_lane_one_per_client():
    q, clients = JobQueue(), [object() for _ in range(6)]
    assert q.put(job("export", clients[0], 1)) == []
    assert [j.ids() for j in q.put(job("export", clients[0], 2))] == [[1]]  # its own earlier export
    for i, c in enumerate(clients[1:4], start=3):
        q.put(job("export", c, i))
    assert q.pending == [] and [j.ids() for j in q.exports] == [[2], [3], [4], [5]]
    with pytest.raises(QueueFull, match="4 instrument exports"):
        q.put(job("export", clients[4], 9))
    running = q.next_export()
    assert running.ids() == [2]
    q.put(job("export", clients[0], 10))  # its sender's next export stops the running one
    assert running.cancelled == "superseded by /export"
    removed, _ = q.cancel(clients[1], None)
    assert [r.request_id for r in removed] == [3]


def test_the_queue_is_bounded_in_bytes():
    q, me = JobQueue(byte_limit=1 << 20), object()
    cells = np.zeros((5000, 3), np.int32)  # a 64 kB datagram's worth of /codemap/set
    n = 0
    with pytest.raises(QueueFull, match="hold over 1 MB"):
        while True:
            q.put(job("set", me, n, layer="bottom", cells=cells.copy()))
            n += 1
    assert 15 <= n <= 20 and q.pending_bytes <= 1 << 20
    q.take(0)
    assert q.pending_bytes == 0


def test_a_flood_of_notes_gives_way_to_itself_never_to_another_clients_waiting_work():
    q, flooder, other = JobQueue(sampling_limit=4), object(), object()
    q.put(job("generate", other, 1))
    for request_id in range(2, 5):
        q.put(job("note", flooder, request_id, pitch=60, velocity=100))
    superseded = q.put(job("note", flooder, 5, pitch=62, velocity=100))  # the fifth sampling job: one must go
    assert [j.ids() for j in superseded] == [[2]] and superseded[0].cancelled == "superseded: too many requests waiting"
    assert [j.ids() for j in q.pending] == [[1], [3], [4], [5]]  # the other client's generate still waits


def _started(q: JobQueue) -> list[int]:
    """The ids of the batch's jobs in the order the worker starts them."""
    ids = []
    while (j := q.next()) is not None:
        ids += j.ids()
    return ids


def test_a_flood_of_notes_delays_another_clients_generate_by_one_note_not_by_the_flood():
    q, flood, other = JobQueue(), object(), object()
    for i in range(10):
        q.put(job("note", flood, 100 + i, pitch=30 + i, velocity=100))
    assert q.take(0)
    assert q.next().ids() == [100]  # the flood's first note is running when the other client asks
    q.put(job("generate", other, 1))
    assert q.next() is None  # the batch ends after that note (its audio goes out), the rest waits again
    assert q.take(0)
    assert _started(q) == [1]  # the other client's turn first; it ends the batch too (its render goes out)
    assert q.take(0)
    assert _started(q) == list(range(101, 110))  # alone again: the flood's notes in one batch


def test_turns_keep_each_clients_order():
    q, a, b = JobQueue(), object(), object()
    q.put(job("generate", a, 1))
    q.put(job("set", a, 2, layer="top", cells=[]))
    q.put(job("note", b, 3, pitch=60, velocity=100))
    q.put(job("set", b, 4, layer="top", cells=[]))
    q.put(job("set", a, 5, layer="top", cells=[]))
    assert q.take(0)
    # a turn: a client's jobs up to and including its first sampling job; every client's first, then the next
    assert [j.ids() for j in q.taken] == [[1], [3], [2], [4], [5]]
    assert _started(q) == [1]
    assert q.take(0) and _started(q) == [3]
    assert q.take(0) and _started(q) == [2, 5, 4]  # a's edits (b just had its turn), b's; no sampling: one batch


def test_an_image_ends_a_turn_as_sampling_does():
    """Pairs of a cheap edit and an /image (which renders) from one client would otherwise hold a batch."""
    q, flood, other = JobQueue(), object(), object()
    for i in range(0, 20, 2):
        q.put(job("erase", flood, 100 + i, layer="top", mask=np.zeros((32, 4), bool)))
        q.put(job("image", flood, 101 + i, layer="top"))
    assert q.take(0)
    assert q.next().ids() == [100] and q.next().ids() == [101]
    q.put(job("generate", other, 1))
    assert q.next() is None  # the image ended the flood's turn: the other client is next
    assert q.take(0) and _started(q) == [1]
