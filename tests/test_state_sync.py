"""
A loop's pushes of fired events (``multitrigger.loop.state_sync``) are the frames stock sends.

Stock's path is ``TriggerRunner.process_trigger_events`` (a validated ``TriggerStateChanges``) and
``TriggerCommsDecoder.asend`` (``_RequestFrame(id, body=msg.model_dump()).as_bytes()``); the frames
are compared byte for byte, for plain payloads (which take the new path) and for the rest (which
must be left to stock's, whose handling of an event that does not serialise stays).
"""

from __future__ import annotations

import datetime
from collections import deque

import pytest

from airflow.jobs.triggerer_job_runner import TriggerEventEntry, TriggerRunner, messages
from airflow.sdk.execution_time.comms import _RequestFrame
from airflow.triggers.base import TaskSuccessEvent, TriggerEvent
from multitrigger.loop import state_sync
from multitrigger.loop.runner import LoopRunner

PLAIN = [
    None, 0, -1, 2**62, 1.5, float("inf"), True, "", "é ☃ \ud800".encode("utf-8", "surrogatepass").decode("utf-8", "replace"),
    {"due": "2026-12-01T18:58:04+00:00", "series": "burst"},
    {"nested": {"list": [1, [2, [3, {"deep": None}]]], "tuple": (1, "a")}, "": {}},
    [], (), [{"a": 1}, {"b": [True, False]}],
]
NOT_PLAIN = [
    datetime.datetime(2026, 12, 1, tzinfo=datetime.timezone.utc), {1: "int key"}, {"set": {1, 2}},
    {"bytes": b"x"}, {"deep": [[[[[[[[[[[[[[[[[["too deep"]]]]]]]]]]]]]]]]]]}, object(),
]


def _frame(msg: messages.TriggerStateChanges) -> bytes:
    return bytes(_RequestFrame(id=41, body=msg.model_dump()).as_bytes())


def _entries(payloads: list) -> list[TriggerEventEntry]:
    return [TriggerEventEntry(trigger_id=i + 1, event=TriggerEvent(p), persist_seq=i if i % 2 else None)
            for i, p in enumerate(payloads)]


def _stock(events: list[TriggerEventEntry], finished: list[int]) -> messages.TriggerStateChanges:
    runner = TriggerRunner.__new__(TriggerRunner)  # process_trigger_events needs only the two deques
    runner.events, runner.failed_triggers = deque(events), deque()
    return runner.process_trigger_events(finished)


@pytest.mark.parametrize("finished", [[], [3, 1, 2]], ids=["no-finished", "finished"])
@pytest.mark.parametrize("payloads", [[p] for p in PLAIN] + [PLAIN, []], ids=lambda p: repr(p)[:40])
def test_plain_events_make_stocks_frame(payloads: list, finished: list[int]) -> None:
    events = _entries(payloads)
    ours = state_sync.changes(list(events), list(finished))
    assert ours is not None
    assert _frame(ours) == _frame(_stock(events, finished))
    assert ours.events == (events or None) and ours.finished == (finished or None) and ours.failures is None
    assert ours.model_dump(exclude_none=True) == _stock(events, finished).model_dump(exclude_none=True)


@pytest.mark.parametrize("payload", NOT_PLAIN, ids=lambda p: type(p).__name__ + repr(p)[:20])
def test_anything_else_is_left_to_stock(payload) -> None:
    assert state_sync.changes(_entries([{"ok": 1}, payload]), []) is None


def test_other_event_classes_are_left_to_stock() -> None:
    entry = TriggerEventEntry(trigger_id=1, event=TaskSuccessEvent(), persist_seq=None)
    assert state_sync.changes([entry], []) is None


def test_the_runner_takes_the_plain_path_only_without_failures() -> None:
    runner = LoopRunner.__new__(LoopRunner)
    runner.events, runner.failed_triggers = deque(_entries([{"a": 1}, None])), deque()
    msg = runner.process_trigger_events([5])
    assert type(msg) is state_sync.PlainChanges and not runner.events
    assert _frame(msg) == _frame(_stock(_entries([{"a": 1}, None]), [5]))

    runner.events = deque(_entries([{"a": 1}]))
    runner.failed_triggers = deque([(7, ValueError("boom"))])
    msg = runner.process_trigger_events([])
    assert type(msg) is messages.TriggerStateChanges and msg.failures and msg.failures[0][0] == 7

    runner.events, runner.failed_triggers = deque(_entries([object()])), deque()  # stock's sanitising path
    msg = runner.process_trigger_events([])
    assert type(msg) is messages.TriggerStateChanges
    with pytest.raises(NotImplementedError):
        _frame(msg)
    assert runner.sanitize_trigger_events(msg).events is None and runner.failed_triggers


def test_a_failure_is_stocks_and_a_lone_surrogate_in_it_still_encodes() -> None:
    runner = LoopRunner.__new__(LoopRunner)
    stock = TriggerRunner.__new__(TriggerRunner)
    plain, odd = ValueError("boom é"), ValueError("no file /data/\udcff.csv")  # a name decoded with surrogateescape
    runner.events, runner.failed_triggers = deque(), deque([(7, plain)])
    stock.events, stock.failed_triggers = deque(), deque([(7, plain)])
    assert _frame(runner.process_trigger_events([])) == _frame(TriggerRunner.process_trigger_events(stock, []))

    stock.failed_triggers = deque([(8, odd)])
    with pytest.raises(UnicodeEncodeError):  # stock's push of it cannot be encoded: its runner would end
        _frame(TriggerRunner.process_trigger_events(stock, []))
    runner.failed_triggers = deque([(8, odd)])
    msg = runner.process_trigger_events([])
    assert msg.failures[0][0] == 8 and "no file /data/\\udcff.csv" in "".join(msg.failures[0][1])
    assert _frame(msg)


async def test_a_push_too_large_for_a_frame_is_split_and_a_lone_huge_event_fails_its_trigger(monkeypatch) -> None:
    """``frame_bound``: the frames sent, with stock's ``asend`` refusing any push of more than 2 events
    or holding trigger 3's event (what ``BoundedWriter`` does by size: refused before a byte is written)."""
    from multitrigger.loop import frame_bound

    sent: list[messages.TriggerStateChanges] = []

    async def refusing(self, msg):
        if len(msg.events or ()) > 2 or any(e.trigger_id == 3 for e in msg.events or ()):
            raise frame_bound.FrameTooLarge("a frame of 99 bytes exceeds the supervisor's 98-byte limit")
        sent.append(msg)
        return messages.TriggerStateSync(to_create=[], to_cancel={msg.events[0].trigger_id} if msg.events else set())

    monkeypatch.setattr(TriggerRunner, "asend", refusing)
    runner = LoopRunner.__new__(LoopRunner)
    runner.to_create, runner.to_cancel = deque(), deque()
    msg = messages.TriggerStateChanges(events=_entries([{"a": i} for i in range(5)]), finished=[9],
                                       failures=[(8, ["boom"])])
    await runner.asend(msg)
    # [1..5] -> [1, 2] | [3, 4, 5] -> [3] (refused alone: dropped, failed) | [4, 5] with finished, failures
    assert [[e.trigger_id for e in m.events or ()] for m in sent] == [[1, 2], [], [4, 5]]
    assert sent[0].finished is None and sent[0].failures is None and sent[1].finished is None
    (tid, tb), = sent[1].failures
    assert tid == 3 and "FrameTooLarge" in "".join(tb) and "exceeds the supervisor's" in "".join(tb)
    assert sent[-1].finished == [9] and sent[-1].failures == [(8, ["boom"])]
    assert list(runner.to_cancel) == [1]  # the first part's answer was taken, as stock takes one


def test_the_bounded_writer_refuses_before_writing() -> None:
    from multitrigger.loop.frame_bound import BoundedWriter, FrameTooLarge

    written: list[bytes] = []
    writer = BoundedWriter(type("W", (), {"write": lambda self, d: written.append(d), "drain": 1})(), limit=10)
    writer.write(b"\0\0\0\x0a" + b"x" * 10)
    with pytest.raises(FrameTooLarge):
        writer.write(b"\0\0\0\x0b" + b"x" * 11)
    assert written == [b"\0\0\0\x0a" + b"x" * 10] and writer.drain == 1
