"""The worker's queue: what supersedes what, and what a note-off takes back."""

from server.delivery import Requester
from server.worker import Job, JobQueue


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
