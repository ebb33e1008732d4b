r"""
Wire protocol between the multitrigger supervisor and its loop processes.

Checked against Airflow 3.3.2 / task-sdk 1.3.2.

Framing is Airflow's own (``airflow.sdk.execution_time.comms``): every frame is a 4-byte big-endian
length followed by a msgpack ``_RequestFrame`` (loop → supervisor) or ``_ResponseFrame``
(supervisor → loop). The loop child runs Airflow's stock ``TriggerRunner`` comms unchanged, so:

* The request channel is the loop's fd 0, a bidirectional socket. Logs travel as JSON lines on a
  separate socket whose fd number the loop finds in ``MULTITRIGGER_LOG_FD``; the loop's stdout and
  stderr are a third socket, read line by line as the loop's own output.
* Only the loop starts an exchange; every request gets exactly one response echoing its id.
* Message bodies are Airflow's typed messages (``ToTriggerSupervisor`` / ``ToTriggerRunner``).
  multitrigger adds no new message types; it adds one *convention*:

  - ``TriggerStateChanges`` with no events, failures or finished ids is a **poll**. The supervisor
    holds it until it has work for that loop (triggers to create or cancel, persisted-event
    acknowledgements) or ``POLL_HOLD_SECONDS`` pass, then answers with a ``TriggerStateSync``.
    That is how new triggers reach a loop in milliseconds although the supervisor may not speak
    first.
  - A ``TriggerStateChanges`` that carries anything is a **push**; it is answered at once. A loop
    pushes as soon as a trigger fires (after a few-millisecond coalescing window), instead of the
    stock once-a-second check-in.

  - A poll may carry the loop's own measurements under the extra body key ``HEALTH_KEY``
    (a ``HealthReport``: event-loop lag, blocked episodes naming their trigger, its Airflow
    version; see ``multitrigger.loop.health``). Airflow's message model ignores the extra key;
    the supervisor reads it before decoding the message. A report that does not convert is
    ignored (health is never a reason to kill a loop).

* A frame longer than ``MAX_FRAME_BYTES``, or one that does not decode, means the loop is broken
  (or hostile): the supervisor treats it as crashed. It is never trusted.

This module has no metadata-database imports.
"""

from __future__ import annotations

from typing import Any

import msgspec

from airflow.sdk.execution_time.comms import _RequestFrame, _ResponseFrame

#: How long the supervisor may hold a loop's poll before answering an empty sync.
POLL_HOLD_SECONDS = 1.0
#: Frames above this size are refused; the sending loop is treated as crashed.
MAX_FRAME_BYTES = 64 * 1024 * 1024
#: Environment variables the loop child reads.
ENV_LOG_FD = "MULTITRIGGER_LOG_FD"
ENV_LOOP_NAME = "MULTITRIGGER_LOOP"
ENV_BLAME_FILE = "MULTITRIGGER_BLAME_FILE"


#: The body key of a poll that carries a ``HealthReport``.
HEALTH_KEY = "multitrigger_health"


class HealthReport(msgspec.Struct, frozen=True):
    """A loop's measurements of itself since its previous report (``multitrigger.loop.health``)."""

    airflow_version: str
    python_version: str
    lag_p50: float | None  # seconds, over the loop's window
    lag_p99: float | None
    lag_max: float | None
    samples: int
    threshold: float  # [triggerer] blocked_main_thread_warning_threshold, as the loop applies it
    blocked: list[tuple[int, float]] = []  # episodes: (trigger id, or 0 for the runner's own code; seconds)
    blocked_unlisted: int = 0  # episodes beyond the report's list (counted only)

    def to_body(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)

    @classmethod
    def from_body(cls, raw: Any) -> HealthReport | None:
        try:
            return msgspec.convert(raw, cls)
        except (msgspec.ValidationError, TypeError):
            return None


class FrameError(Exception):
    """A loop sent bytes that are not a valid request frame."""


class FrameReader:
    """Incremental decoder of length-prefixed request frames from one loop's byte stream."""

    def __init__(self, max_frame: int = MAX_FRAME_BYTES) -> None:
        self._buffer = bytearray()
        self._max_frame = max_frame
        self._decoder = msgspec.msgpack.Decoder(_RequestFrame)

    def feed(self, data: bytes) -> list[_RequestFrame]:
        """Add received bytes; return every complete frame. Raises ``FrameError`` on bad input."""
        self._buffer.extend(data)
        frames: list[_RequestFrame] = []
        while len(self._buffer) >= 4:
            length = int.from_bytes(self._buffer[:4], "big")
            if length > self._max_frame:
                raise FrameError(f"frame of {length} bytes exceeds the {self._max_frame}-byte limit")
            if len(self._buffer) < 4 + length:
                break
            payload = bytes(self._buffer[4 : 4 + length])
            del self._buffer[: 4 + length]
            try:
                frames.append(self._decoder.decode(payload))
            except (msgspec.DecodeError, msgspec.ValidationError) as err:
                raise FrameError(f"undecodable frame: {err}") from err
        return frames


def encode_response(request_id: int, body: dict[str, Any] | None, error: dict[str, Any] | None = None) -> bytes:
    """Encode one response frame, exactly as Airflow's ``WatchedSubprocess.send_msg`` does."""
    return bytes(_ResponseFrame(id=request_id, body=body, error=error).as_bytes())
