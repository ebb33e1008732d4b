"""
Loops' requests that need the metadata DB (connections, variables, XComs, …), answered off the
selector thread, fairly, and always within a bound.

Why: a loop's ``GetConnection`` runs Airflow's handlers against the DB. On the selector thread a
slow or black-holed DB would freeze every loop; on a plain queue one team's burst of requests
would delay every other team's. So requests wait in one queue per loop and the request lane takes
them round robin, one at a time (the in-process Execution API client is not shared between
threads). Each request gets an answer by ``timeout`` seconds after it arrived: the handler's, or
"metadata DB unreachable" — a trigger never hangs forever on the supervisor. A late answer after
that is dropped.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from pydantic import BaseModel

from multitrigger.supervisor import requests
from multitrigger.supervisor.lanes import Done, Lane

log = structlog.get_logger(__name__)

Reply = Callable[[dict | None, dict | None], None]


@dataclass
class _Ask:
    loop: str
    msg: BaseModel
    reply: Reply
    deadline: float
    answered: bool = False

    def answer(self, body: dict | None, error: dict | None) -> None:
        if not self.answered:
            self.answered = True
            self.reply(body, error)


class RequestDesk:
    """Per-loop queues, served round robin by one lane, each request answered within ``timeout``."""

    def __init__(
        self, lane: Lane, timeout: float, clock: Callable[[], float] = time.monotonic,
        answer: Callable[[BaseModel], tuple[dict | None, dict | None]] = requests.answer,
        team_of: Callable[[str], str | None] = lambda _loop: None,
    ) -> None:
        self.lane = lane
        self.timeout = timeout
        self.clock = clock
        self._answer = answer  # Airflow's handlers (``requests.answer``); injectable for tests
        self._team_of = team_of  # loop → the team its requests resolve as (``teams.LoopTeams``; on the lane)
        self._queues: dict[str, deque[_Ask]] = {}
        self._turn: deque[str] = deque()  # loops with queued requests, in serving order
        self._in_flight: _Ask | None = None
        self._last_loop: str | None = None

    def ask(self, loop: str, msg: BaseModel, reply: Reply) -> None:
        """Queue ``msg`` from ``loop``; ``reply(body, error)`` is called exactly once, on the selector thread."""
        if type(msg) in requests.LOCAL:
            reply(*self._answer(msg))
            return
        queue = self._queues.setdefault(loop, deque())
        if not queue:
            self._turn.append(loop)
        queue.append(_Ask(loop, msg, reply, self.clock() + self.timeout))
        self.pump()

    def pump(self) -> None:
        """Time out what waited too long; hand the next loop's request to the lane if it is free."""
        now = self.clock()
        if self._in_flight is not None and now >= self._in_flight.deadline and not self._in_flight.answered:
            log.error("loop request unanswered; metadata DB unreachable?", loop=self._in_flight.loop,
                      request=type(self._in_flight.msg).__name__, timeout=self.timeout)
            self._in_flight.answer(None, requests.unreachable(self.timeout))
        for queue in self._queues.values():
            while queue and now >= queue[0].deadline:
                queue.popleft().answer(None, requests.unreachable(self.timeout))
        self._turn = deque(loop for loop in self._turn if self._queues.get(loop))
        if self._in_flight is None and self._turn:
            if len(self._turn) > 1 and self._turn[0] == self._last_loop:
                self._turn.rotate(-1)  # the loop just served waits behind the others
            loop = self._last_loop = self._turn.popleft()
            ask = self._queues[loop].popleft()
            if self._queues[loop]:
                self._turn.append(loop)
            self._in_flight = ask
            self.lane.submit(f"request {type(ask.msg).__name__}", lambda: self._ask_as_team(ask), self._done)

    def _ask_as_team(self, ask: _Ask) -> tuple[dict | None, dict | None]:
        team = self._team_of(ask.loop)
        return self._answer(ask.msg, team) if team is not None else self._answer(ask.msg)

    def _done(self, done: Done[tuple[dict | None, dict | None]]) -> None:
        ask, self._in_flight = self._in_flight, None
        if ask is not None:
            if done.error is not None:
                ask.answer(None, requests.unreachable(self.timeout))
            elif done.value is not None:
                ask.answer(*done.value)
        self.pump()

    def next_deadline(self) -> float:
        deadlines = [q[0].deadline for q in self._queues.values() if q]
        if self._in_flight is not None and not self._in_flight.answered:
            deadlines.append(self._in_flight.deadline)
        return min(deadlines, default=float("inf"))

    def forget(self, loop: str) -> None:
        """The loop's process is gone: its queued requests have nobody to answer."""
        self._queues.pop(loop, None)  # a version slot's name may never come back
