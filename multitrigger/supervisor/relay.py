"""
A loop's output budget: how fast its lines are processed, and how many may wait.

Delivering a line is the costly part of a loop's output (the stock consumer decodes it, masks
secrets and writes the trigger's log file; an output line is rendered into the supervisor's log),
so that is what is budgeted, per loop: a ``TokenBucket`` of ``log_bytes_per_second``, and a
``LogRelay`` that queues lines beyond the budget up to ``log_buffer_bytes`` and drops (and counts)
what does not fit. The supervisor delivers them in its own phase, after every loop's requests and
check-ins (``Supervisor._service``), in slices, so a flooding loop delays nobody else's events.

Pure but for its one log line per drop episode: clocks are injected, sinks are callables; the
lines come from ``output.LineCutter``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import structlog

from multitrigger.supervisor.output import CutLine, OutputLimits, cut_text_line

log = structlog.get_logger(__name__)

#: The budget charges at least this per line: delivering a line costs per line (JSON decode,
#: structlog, a file write) as well as per byte, so a flood of empty lines is budgeted too.
MIN_LINE_CHARGE = 256


class TokenBucket:
    """A byte budget: ``rate`` per second, up to ``burst`` saved. A take may overdraw it; the
    next take then waits until the debt is repaid (so a line bigger than ``burst`` still passes)."""

    def __init__(self, rate: float, burst: float | None = None, clock: Callable[[], float] = lambda: 0.0) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        self.rate, self.burst, self.clock = rate, burst if burst is not None else rate / 8, clock
        self._tokens, self._at = self.burst, clock()

    def _refill(self) -> float:
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        return now

    def take(self, cost: int) -> bool:
        """Spend ``cost`` if the budget is not in debt."""
        self._refill()
        if self._tokens <= 0:
            return False
        self._tokens -= cost
        return True

    def ready_at(self) -> float:
        """When ``take`` can next succeed."""
        now = self._refill()
        return now if self._tokens > 0 else now + (-self._tokens) / self.rate + 1e-4


@dataclass
class Stream:
    """Where one kind of line goes: ``deliver`` gets each line without its newline; a cut line
    is first turned into one by ``render`` (at delivery time, under the budget)."""

    deliver: Callable[[bytes], None]
    render: Callable[[CutLine], bytes] = cut_text_line


#: Bytes charged per queued piece on top of its length (Python object overhead), so a loop that
#: writes one byte at a time cannot make the queue's real size many times its nominal capacity.
ENTRY_OVERHEAD = 128


class LogRelay:
    """One loop's queue of output lines between its sockets and their (costly) sinks.

    ``put`` never blocks and never holds more than ``capacity`` bytes: a piece that does not fit
    is dropped and counted, and so is every piece after it until the queue is down to half its
    capacity; ``on_drop`` gets one marker line per such episode (when it ends, i.e. when the
    queue is down to half, and every ``report_every`` seconds while it lasts). ``pump`` delivers lines one at a time
    while the budget and the caller's deadline allow. ``after`` runs a callback once every line
    queued before it has been delivered (a trigger's log file is closed after its last lines).
    """

    def __init__(self, name: str, budget: TokenBucket, capacity: int, on_drop: Callable[[str], None],
                 clock: Callable[[], float], report_every: float = 10.0) -> None:
        self.name, self.budget, self.capacity, self.on_drop, self.clock = name, budget, capacity, on_drop, clock
        self.report_every = report_every
        self._queue: deque[tuple[bytes | CutLine, Stream] | Callable[[], None]] = deque()
        self._offset = 0  # into the first batch
        self.queued = 0  # bytes charged for what is held (whole pieces, until fully delivered)
        self.dropped_total = 0
        self._dropped = self._dropped_lines = 0
        self._dropping_since = math.inf

    @classmethod
    def for_loop(cls, name: str, limits: OutputLimits, clock: Callable[[], float]) -> LogRelay:
        """The relay of loop ``name``; its drop markers go to the supervisor's log."""
        budget = TokenBucket(limits.log_bytes_per_second, clock=clock)
        return cls(name, budget, limits.log_buffer_bytes, lambda text: log.warning(text, loop=name), clock)

    def put(self, pieces: list[bytes | CutLine], stream: Stream) -> None:
        for piece in pieces:
            size = _size(piece)
            # An episode of drops lasts until the queue is down to half: one marker per flood,
            # not one per line that happened to fit between two drops.
            room = self.capacity // 2 if self._dropping_since < math.inf else self.capacity
            if self.queued + size > room:
                self._drop(piece, size)
                continue
            self.report_drops()
            self._queue.append((piece, stream))
            self.queued += size

    def _drop(self, piece: bytes | CutLine, size: int) -> None:
        now = self.clock()
        self._dropped += size - ENTRY_OVERHEAD
        self._dropped_lines += piece.count(b"\n") if isinstance(piece, bytes) else 1
        self.dropped_total += size - ENTRY_OVERHEAD
        self._dropping_since = min(self._dropping_since, now)
        if now - self._dropping_since >= self.report_every:  # a long episode: report, go on counting
            self._report()
            self._dropping_since = now

    def report_drops(self) -> None:
        """End the current drop episode, with its marker."""
        self._report()
        self._dropping_since = math.inf

    def _report(self) -> None:
        if self._dropped:
            self.on_drop(f"{self._dropped} bytes ({self._dropped_lines} lines) of log output dropped: "
                         f"loop {self.name} over its log budget")
            self._dropped = self._dropped_lines = 0

    def after(self, callback: Callable[[], None]) -> None:
        if self._queue:
            self._queue.append(callback)
        else:
            callback()

    def filling(self) -> bool:
        """Over a quarter of its capacity is queued (``OutputGate``)."""
        return self.queued * 4 > self.capacity

    def next_due(self) -> float:
        """When ``pump`` can deliver something: now, when the budget allows, or never (empty)."""
        if not self._queue:
            return math.inf
        return self.clock() if callable(self._queue[0]) else self.budget.ready_at()

    def pump(self, deadline: float = math.inf, budgeted: bool = True) -> None:
        """Deliver queued lines until the queue is empty, the budget is spent or ``deadline``."""
        while self._queue:
            entry = self._queue[0]
            if callable(entry):
                self._queue.popleft()
                entry()
                continue
            if self.clock() >= deadline:
                return
            piece, stream = entry
            if isinstance(piece, CutLine):
                if budgeted and not self.budget.take(len(piece.head)):
                    return
                self._pop(piece)
                stream.deliver(stream.render(piece).rstrip(b"\n"))
                continue
            end = piece.find(b"\n", self._offset)
            end = len(piece) if end == -1 else end
            if budgeted and not self.budget.take(max(end + 1 - self._offset, MIN_LINE_CHARGE)):
                return
            line, self._offset = piece[self._offset: end], end + 1
            if self._offset >= len(piece):
                self._pop(piece)
            stream.deliver(line)

    def _pop(self, piece: bytes | CutLine) -> None:
        self._queue.popleft()
        self.queued -= _size(piece)
        self._offset = 0
        if self._dropping_since < math.inf and self.queued <= self.capacity // 2:
            self.report_drops()  # caught up: the episode is over, even if the loop went quiet

    def flush(self) -> None:
        """Deliver everything queued now, whatever the budget (shutdown)."""
        self.pump(budgeted=False)
        self.report_drops()


class OutputGate:
    """Events before log lines: while an event batch is being written (``busy``), output is
    delivered at most once every ``every`` seconds; once a loop's queue is over a quarter of its
    capacity and its budget would deliver (``pressed``), at most every ``pressed_every``.

    The persist step runs on its own thread but in this process, so it shares the interpreter lock
    with the selector thread that delivers output: every line delivered (decoded, masked, written
    to its trigger's file: ~25 us warm, microbench) while a batch is being written slows the batch,
    and with it the latency of every event in it. A burst brings two records per event, about two
    thirds of the CPU that persisting the event costs; at one 10 ms slice every 50 ms, up to a fifth
    of the selector's time while a batch was written went to them (issue 13). Lines wait in their
    loop's ``LogRelay`` meanwhile (bounded, budgeted as ever); at most ``every`` later a delivery
    slice runs anyway, so a persist step that hangs (a slow DB) never stops output. A queue filling
    up while steps follow one another (another team's stream of events) is served at the shorter
    interval once over a quarter full: it keeps three quarters of its room for a spike, where it
    had all of it before.
    """

    def __init__(self, every: float, clock: Callable[[], float], pressed_every: float | None = None) -> None:
        self.every, self.clock = every, clock
        self.pressed_every = every if pressed_every is None else pressed_every
        self._last = -math.inf

    def opens_at(self, busy: bool, pressed: bool = False) -> float:
        """When output may be delivered next (-inf: now)."""
        if not busy:
            return -math.inf
        return self._last + (self.pressed_every if pressed else self.every)

    def enter(self, busy: bool, pressed: bool = False) -> bool:
        """True (and the delivery is counted) if output may be delivered now."""
        now = self.clock()
        if now < self.opens_at(busy, pressed):
            return False
        self._last = now
        return True


#: Output waits for a persist step only while it has run less than this: a step held up by a slow
#: DB does not keep every loop's output at a trickle (a chatty loop would fill its buffer and drop).
OUTPUT_GATE_MAX = 0.5
#: ... and for a takeover of handed-back triggers, at most this long after the first hint.
TAKEOVER_GATE_MAX = 5.0


def output_busy_until(now: float, step_age: float | None, takeover_since: float | None,
                      step_max: float = OUTPUT_GATE_MAX, takeover_max: float = TAKEOVER_GATE_MAX) -> float | None:
    """Until when ``OutputGate`` counts the supervisor as busy, or None (not busy): while a persist
    step is younger than ``step_max`` (events before log lines), and while triggers other members
    handed back are being taken over, at most ``takeover_max`` after the first hint (starting them
    before their log lines). A takeover of thousands is bound by CPU, the loops' and this process's
    alike; delivering each new trigger's first line (its log file made, the record decoded, masked
    and written) was over half of the supervisor's samples in one (py-spy, issue 13). Lines wait in
    their loop's relay meanwhile, bounded as ever, and still get a slice every gate interval."""
    until = []
    if step_age is not None and step_age < step_max:
        until.append(now + step_max - step_age)
    if takeover_since is not None and now < takeover_since + takeover_max:
        until.append(takeover_since + takeover_max)
    return max(until, default=None)


def pressed(relays: Iterable[LogRelay]) -> bool:
    """Some loop's queue holds over a quarter of its capacity and its budget would deliver now
    (``OutputGate``): a loop flooding past its budget does not take every loop back to the short
    interval, as its own lines would not go any faster."""
    return any(relay.filling() and relay.next_due() <= relay.clock() for relay in relays)


def _size(piece: bytes | CutLine) -> int:
    return ENTRY_OVERHEAD + (len(piece) if isinstance(piece, bytes) else len(piece.head) + len(piece.tail))
