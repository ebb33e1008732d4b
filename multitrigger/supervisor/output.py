"""
Long lines from a loop: cut them, bounded, and say so.

The supervisor is shared by every team, and every loop writes to it: JSON log lines (routed,
secrets-masked and written to per-trigger log files by the stock consumer) and plain
stdout/stderr lines. Unbounded, one trigger that logged a 256 MiB API response took the supervisor
to 1.4 GB and delayed every other bundle's events by seconds.

``LineCutter`` splits a loop's byte stream into lines and never holds more than
``max_log_line_bytes`` of one line (plus a small tail, for a JSON record's trailing
``trigger_id``): the rest is counted and discarded as it arrives, and the line becomes a
``CutLine`` that says how many bytes were dropped. ``cut_json_record`` turns a cut JSON log line
into a synthetic, valid record (no attempt to parse the partial JSON: level, timestamp, the event's
prefix, the marker, and ``trigger_id``/``logger`` when the kept bytes have them) that the stock
consumer still files under its trigger. How fast lines are then processed, and how many may wait,
is ``multitrigger.supervisor.relay``.

Pure: no sockets, no Airflow (the defaults come from the config schema).
"""

from __future__ import annotations

import json
import re
from json.decoder import scanstring
from dataclasses import dataclass, fields

from multitrigger.config.schema import SupervisorSettings

#: Bytes kept from the *end* of a cut line: a JSON log record's ``trigger_id`` and ``logger``
#: come after its (long) ``event``.
TAIL_BYTES = 4096


_FILE = SupervisorSettings()  # the [supervisor] defaults (validated there, not restated here)


@dataclass(frozen=True)
class OutputLimits:
    """Per-loop bounds: the ``[supervisor]`` keys of the same names."""

    max_log_line_bytes: int = _FILE.max_log_line_bytes
    log_bytes_per_second: int = _FILE.log_bytes_per_second
    log_buffer_bytes: int = _FILE.log_buffer_bytes

    @classmethod
    def of(cls, settings: object) -> OutputLimits:
        """The limits in resolved settings (``supervisor.settings.RunSettings``)."""
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})


@dataclass(frozen=True)
class CutLine:
    """A line longer than the limit: its first ``limit`` bytes, its last bytes, what was dropped."""

    head: bytes
    tail: bytes
    cut: int  # bytes dropped (everything after ``head``)
    limit: int

    @property
    def total(self) -> int:
        return len(self.head) + self.cut

    def marker(self) -> str:
        return f"… [multitrigger: {self.cut} bytes cut from this line of {self.total}; limit {self.limit}]"


def cut_text_line(line: CutLine) -> bytes:
    """A cut stdout/stderr line: its head, then the marker."""
    return line.head + b" " + line.marker().encode() + b"\n"


_HEAD_FIELD = re.compile(rb'"(timestamp|level|logger)":"((?:[^"\\]|\\.){0,200})"')
_TAIL_FIELD = re.compile(rb'"(logger)":"((?:[^"\\]|\\.){0,200})"|"(trigger_id)":(\d{1,19})[,}]')
_EVENT = b'"event":"'


def cut_json_record(line: CutLine) -> bytes:
    """A valid JSON log record standing in for a cut one (keeps level, trigger_id, logger).

    The record's fields before ``event`` (timestamp, level) are read from the head, the ones
    after it (trigger_id, logger) from the tail; the event text is the head's prefix of it.
    """
    head, fields = line.head, {}
    event_at = head.find(_EVENT)
    before = head[:event_at] if event_at != -1 else head[:TAIL_BYTES]
    for match in _HEAD_FIELD.finditer(before):
        fields[match[1].decode()] = _json_string(match[2])
    for match in _TAIL_FIELD.finditer(line.tail):
        if match[3]:
            fields["trigger_id"] = int(match[4])
        else:
            fields["logger"] = _json_string(match[2])
    event = _string_prefix(head[event_at + len(_EVENT):]) if event_at != -1 else head.decode("utf-8", "replace")
    record: dict[str, object] = {"timestamp": fields.get("timestamp"), "level": fields.get("level") or "warning",
                                 "event": f"{event} {line.marker()}"}
    for key in ("logger", "trigger_id"):
        if key in fields:
            record[key] = fields[key]
    return json.dumps(record, ensure_ascii=False).encode("utf-8", "replace") + b"\n"


def _json_string(raw: bytes) -> str:
    try:
        return json.loads(b'"' + raw + b'"')
    except ValueError:
        return raw.decode("utf-8", "replace")


def _string_prefix(raw: bytes) -> str:
    """The text of a JSON string that starts at ``raw`` and may have been cut off anywhere,
    even inside an escape; C-speed (``json``'s own string scanner), no regex over the head."""
    text = raw.decode("utf-8", "replace")
    try:
        return scanstring(text, 0, False)[0]  # the string ended inside the head
    except ValueError:
        pass
    for trim in range(7):  # it ran past the head, perhaps through a 6-character escape like "\u00e9"
        try:
            return scanstring(text[: len(text) - trim] + '"', 0, False)[0]
        except ValueError:
            continue
    return text


class LineCutter:
    """Split a byte stream into newline-terminated lines of at most ``limit`` bytes.

    ``feed`` returns what it completed: batches of short lines as they came (one copy, no
    per-line work while no line is long) and a ``CutLine`` for each long one. It holds at most
    ``limit + TAIL_BYTES`` of the current unfinished line.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.limit = limit
        self._head = bytearray()
        self._tail = bytearray()  # last bytes of the line, only once it is being cut
        self._cut = 0

    @property
    def pending(self) -> int:
        """Bytes held for the unfinished line (bounded by ``limit + TAIL_BYTES``)."""
        return len(self._head) + len(self._tail)

    def feed(self, data: bytes) -> list[bytes | CutLine]:
        first = data.find(b"\n")
        if first == -1:
            self._extend(data)
            return []
        out: list[bytes | CutLine] = []
        self._extend(data[:first])
        self._finish(out)
        last = data.rfind(b"\n")
        if last - first - 1 <= self.limit:  # every line in between is short: take them as they are
            if last > first:
                out.append(data[first + 1: last + 1])
        else:
            pos = first + 1
            while (nl := data.find(b"\n", pos)) != -1:
                self._extend(data[pos:nl])
                self._finish(out)
                pos = nl + 1
        self._extend(data[last + 1:])
        return _joined(out)

    def flush(self) -> list[bytes | CutLine]:
        """The unfinished line (at EOF), newline-terminated; nothing if there is none."""
        out: list[bytes | CutLine] = []
        if self._head or self._cut:
            self._finish(out)
        return out

    def _extend(self, piece: bytes) -> None:
        if self._cut:
            self._cut += len(piece)
            self._tail += piece[-TAIL_BYTES:]
            del self._tail[:-TAIL_BYTES]
            return
        room = self.limit - len(self._head)
        if len(piece) <= room:
            self._head += piece
            return
        self._tail[:] = (self._head[-TAIL_BYTES:] + piece[-TAIL_BYTES:])[-TAIL_BYTES:]
        self._head += piece[:room]
        self._cut = len(piece) - room

    def _finish(self, out: list[bytes | CutLine]) -> None:
        if self._cut:
            out.append(CutLine(bytes(self._head), bytes(self._tail), self._cut, self.limit))
        else:
            out.append(bytes(self._head) + b"\n")
        self._head.clear()
        self._tail.clear()
        self._cut = 0


def _joined(pieces: list[bytes | CutLine]) -> list[bytes | CutLine]:
    """Adjacent batches of short lines as one (a chunk of short lines is then one batch)."""
    out: list[bytes | CutLine] = []
    for piece in pieces:
        if out and isinstance(piece, bytes) and isinstance(out[-1], bytes):
            out[-1] += piece
        else:
            out.append(piece)
    return out
