"""A loop that stops with the answer to its poll already read logs no "unknown request frame".

A loop blocked when it is told to stop (SIGTERM) has the supervisor's answer to its held poll
waiting (the supervisor answers a held poll after ``POLL_HOLD_SECONDS``). Once the block ends, the
comms reader's wake-up for that answer is queued when the main loop stops the poll task: if the
poll is cancelled and awaited first, the reader runs in between, finds the poll's request given up
and warns "Got response for unknown request frame" (seen at every stop of the ``noisy`` benchmark's
blocking loop). ``LoopRunner._stop_comms`` cancels both before awaiting either.

The runner is real (``LoopRunner`` with stock ``TriggerCommsDecoder`` and its reader task); the
answer's bytes are handed to the reader's ``StreamReader`` directly, as its transport does when they
arrive, so that they land exactly between the poll's request and its cancellation, every time. The
first test shows the old order warns under the same conditions, so the second one can fail.
"""

from __future__ import annotations

import asyncio
import socket
from contextlib import suppress
from typing import Any

import msgspec
import pytest

from airflow.jobs.triggerer_job_runner import TriggerCommsDecoder, messages
from airflow.sdk.execution_time.comms import _RequestFrame, _ResponseFrame
from multitrigger.loop import runner as runner_module
from multitrigger.loop.runner import LoopRunner

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(autouse=True)
def _no_output_capture(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner_module, "attribute_output", lambda: None)  # as in test_loop_sweep


class _Log:
    """The decoder's logger: what it warned."""

    def __init__(self) -> None:
        self.warnings: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **kw: Any) -> None:
        self.warnings.append((event, kw))

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kw: None


class _Writer:
    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.frames.append(bytes(data))


async def _stopping_with_the_answer_read(stop: Any) -> tuple[LoopRunner, _Log, asyncio.Task, asyncio.Task]:
    """A runner whose poll is out; its answer arrives; then ``stop(runner, poller)`` runs."""
    runner, log, writer, stream = LoopRunner(), _Log(), _Writer(), asyncio.StreamReader()
    here, _there = socket.socketpair()
    runner.comms_decoder = TriggerCommsDecoder(
        async_writer=writer, async_reader=stream, socket=here, log=log, resp_decoder=runner_module._RESP_DECODER,
        body_decoder=runner_module._BODY_DECODER, err_decoder=runner_module._ERR_DECODER)
    await runner.comms_decoder.start_reader()
    reader = runner.comms_decoder._reader_task
    poller = asyncio.create_task(runner._poll_forever())
    while not writer.frames:
        await asyncio.sleep(0)
    poll = msgspec.msgpack.decode(writer.frames[0][4:], type=_RequestFrame)
    answer = messages.TriggerStateSync(to_create=[], to_cancel=set()).model_dump()
    stream.feed_data(bytes(_ResponseFrame(id=poll.id, body=answer).as_bytes()))  # the reader's wake-up is queued
    runner.stop = True
    await stop(runner, poller)
    here.close()
    _there.close()
    return runner, log, poller, reader


async def _old_order(runner: LoopRunner, poller: asyncio.Task) -> None:
    for task in (poller, runner.comms_decoder._reader_task):
        task.cancel()
        with suppress(asyncio.CancelledError, Exception):
            await task


def test_the_old_order_warns_of_an_unknown_frame() -> None:
    _, log, poller, reader = asyncio.run(_stopping_with_the_answer_read(_old_order))
    assert poller.done() and reader.done()
    assert [event for event, _ in log.warnings] == ["Got response for unknown request frame"]


def test_stopping_reads_no_answer_after_the_poll_is_given_up() -> None:
    runner, log, poller, reader = asyncio.run(_stopping_with_the_answer_read(LoopRunner._stop_comms))
    assert poller.done() and reader.done()
    assert log.warnings == []
    assert runner.comms_decoder._pending == {}  # the poll's request is gone, not answered later
