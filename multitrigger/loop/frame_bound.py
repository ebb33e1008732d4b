"""
A push too large for one frame is split, and one event too large for any frame fails its trigger.

Checked against Airflow 3.3.2 (``TriggerCommsDecoder.asend`` writes ``_RequestFrame.as_bytes()``
with one ``StreamWriter.write``; ``TriggerStateChanges``, ``TriggerEventEntry``).

The supervisor takes a frame longer than ``protocol.MAX_FRAME_BYTES`` for a broken loop and
restarts it (it must not buffer an unbounded frame). A loop pushes every pending event in one
frame, so a few thousand coalesced events with large payloads, or one event with a huge one, made
a frame past the limit: the loop restarted with nothing blamed, and the same push came again. Now
``BoundedWriter`` refuses such a frame before a byte of it is written (``FrameTooLarge``), and
``halves`` splits the push: the events in two frames, ``finished`` and ``failures`` in the last
(after their events, as in one frame). An event alone in a frame that is still too large is
dropped and its trigger failed (``too_large``), as stock drops an event that does not serialise.
A trigger's own request that is too large raises ``FrameTooLarge`` into that trigger.
"""

from __future__ import annotations

from traceback import format_exception
from typing import Any

from airflow.jobs.triggerer_job_runner import messages
from multitrigger.protocol import MAX_FRAME_BYTES

#: Bytes of a frame's length prefix (``_RequestFrame.as_bytes``).
PREFIX = 4


class FrameTooLarge(ValueError):
    """A frame the supervisor would refuse; nothing of it was written."""


class BoundedWriter:
    """The loop's ``StreamWriter``, refusing a frame longer than ``limit``."""

    def __init__(self, writer: Any, limit: int = MAX_FRAME_BYTES) -> None:
        self._writer, self._limit = writer, limit

    def write(self, data: bytes) -> None:
        if len(data) - PREFIX > self._limit:
            raise FrameTooLarge(f"a frame of {len(data) - PREFIX} bytes exceeds the supervisor's "
                                f"{self._limit}-byte limit")
        self._writer.write(data)

    def __getattr__(self, name: str) -> Any:  # drain, close, transport, ...: the writer's own
        return getattr(self._writer, name)


def halves(msg: messages.TriggerStateChanges) -> tuple[messages.TriggerStateChanges, messages.TriggerStateChanges]:
    """The push as two: the first half of its events; the rest with ``finished`` and ``failures``."""
    events = list(msg.events or ())
    cut = len(events) // 2
    return (messages.TriggerStateChanges(events=events[:cut]),
            messages.TriggerStateChanges(events=events[cut:], finished=msg.finished, failures=msg.failures))


def too_large(msg: messages.TriggerStateChanges, err: FrameTooLarge) -> messages.TriggerStateChanges:
    """The push of one event too large to send: the event dropped, its trigger failed with ``err``."""
    (entry,) = msg.events or ()
    failure = (entry.trigger_id, format_exception(type(err), err, err.__traceback__))
    return messages.TriggerStateChanges(finished=msg.finished, failures=[*(msg.failures or ()), failure])
