"""
The supervisor's side of a zygote (``multitrigger.loop.zygote``): start it, fork loops from it,
learn how they exit.

Why: a forked loop is running in ~40 ms instead of ~5 s for an exec'd one, and shares the
zygote's imported Airflow instead of owning a copy. Nothing here blocks the supervisor for long:
``start`` returns at once (the zygote reports ``ready`` through the selector after its imports),
and ``fork`` waits only for the zygote's reply (milliseconds; bounded by ``timeout``).

Messages are ``multitrigger.zygote_protocol``'s (the wire spec); what the zygote sends is
dispatched through a handler table keyed by message type.

The supervisor's one selector serves the zygote like a loop: ``register`` stores the same
``(owner, sock, reader)`` key data as ``LoopProcess.register`` and the owner has the same
``service``/``flush`` methods, so ``Supervisor._service`` needs no special case.

A forked loop is a grandchild of the supervisor. Its exit status comes from the zygote's
``exited`` reports. Each one is also held by a pidfd (Linux >= 5.3), so signals never reach a
recycled pid and, if the zygote itself dies (its children then get SIGKILL from PDEATHSIG), the
client can see when each child is really gone and reports it as ``ZYGOTE_DIED``.

Longer than most modules here (~390 lines) because it is one process's client read in one go:
start, the handler table, the fork round trip, and the forked children's exits all share the
zygote's socket state. Which zygotes exist and when they are replaced is ``zygote_pool``'s.
"""

from __future__ import annotations

import errno
import os
import select
import selectors
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import structlog

from multitrigger.cgroups.leftovers import read_stat
from multitrigger.interpreter_probe import bootstrap_code
from multitrigger.pdeathsig import die_with_parent
from multitrigger.zygote_protocol import (
    ENV_PRELOAD, ENV_STAGED, RECV_SIZE, TO_SUPERVISOR, Configure, Exited, Failed, Fork, ForkFailed, Forked,
    ProtocolError, Ready, Rejected, ToSupervisor, ToZygote, send,
)
from multitrigger.zygote_protocol import socketpair as control_socketpair
from multitrigger.zygote_protocol import decode as decode_message

log = structlog.get_logger(__name__)

#: Return code of a forked loop whose zygote died: PDEATHSIG killed it with SIGKILL.
ZYGOTE_DIED = -int(signal.SIGKILL)
#: How long ``fork`` waits for the zygote's reply before giving up (the caller then exec's cold).
FORK_TIMEOUT = 2.0


class ZygoteError(Exception):
    """The zygote cannot fork now (not ready, dead, or no timely reply): exec the loop instead."""


@dataclass
class _Child:
    pidfd: int | None
    returncode: int | None = None
    lost_with_zygote: bool = False  # returncode is ZYGOTE_DIED, not a report


@dataclass
class Zygote:
    """One running zygote process and the loops it forked."""

    python: Path
    popen: subprocess.Popen
    sock: socket.socket
    started_at: float = field(default_factory=time.monotonic)
    ready_at: float | None = None
    error: str | None = None
    info: Ready | None = None  # what the zygote reported when it became ready
    _children: dict[int, _Child] = field(default_factory=dict)
    _replies: dict[int, Forked | ForkFailed | Rejected] = field(default_factory=dict)
    _next_id: int = 1
    _pending: int | None = None  # the fork request waiting for its reply (one at a time)
    last_rejection: str | None = None  # why the zygote last refused a request (a bug on one side)
    _eof: bool = False
    #: A staged zygote (``start(staged=True)``) waits for ``configure`` before it imports Airflow.
    awaiting_env: bool = False
    configured_env: dict[str, str] | None = None  # what ``configure`` sent (Airflow was imported under it)
    _selector: selectors.BaseSelector | None = None

    @classmethod
    def start(cls, python: Path, env: Mapping[str, str], cwd: Path, preload: tuple[str, ...] = (),
              staged: bool = False) -> Zygote:
        """Start a zygote for ``python``; it is ``ready`` once its imports are done (~3-5 s).

        ``env`` must be a loop environment (no secrets: every child inherits the zygote's memory).
        ``staged``: ``env`` is only an early one (``launch.early_loop_env``); the zygote imports
        what needs no Airflow configuration, then waits for ``configure`` with the real one.
        """
        ours, theirs = control_socketpair()
        child_env = dict(env)
        if preload:
            child_env[ENV_PRELOAD] = ",".join(preload)
        if staged:
            child_env[ENV_STAGED] = "1"
        try:
            popen = subprocess.Popen(
                [str(python), "-c", bootstrap_code("multitrigger.loop.zygote")],
                stdin=theirs,
                stdout=2,  # import warnings and last-chance tracebacks: the supervisor's stderr
                env=child_env,
                cwd=cwd,
                close_fds=True,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        finally:
            theirs.close()
        ours.setblocking(False)
        zygote = cls(python=Path(python), popen=popen, sock=ours, awaiting_env=staged)
        log.info("zygote starting", python=str(python), pid=popen.pid, staged=staged)
        return zygote

    def configure(self, env: Mapping[str, str], timeout: float = FORK_TIMEOUT) -> None:
        """Give a staged zygote its loop environment: it imports Airflow under it, then is ready."""
        if not self.awaiting_env:
            raise ZygoteError(f"zygote for {self.python} is not waiting for an environment")
        self._send(Configure(env=dict(env)), [], time.monotonic() + timeout)
        self.awaiting_env, self.configured_env = False, dict(env)

    # -- state ---------------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return not self._eof and self.popen.poll() is None

    @property
    def ready(self) -> bool:
        """Forks are served now."""
        return self.ready_at is not None and self.alive

    @property
    def starting(self) -> bool:
        """Still importing: worth waiting for at supervisor start-up."""
        return self.ready_at is None and self.error is None and self.alive

    def fileno(self) -> int:
        return self.sock.fileno()

    def wait_ready(self, timeout: float) -> bool:
        """Block until ready, failed or ``timeout``: for tools and tests, never the supervisor."""
        deadline = time.monotonic() + timeout
        while self.starting and (remaining := deadline - time.monotonic()) > 0:
            poller = select.poll()
            poller.register(self.sock, select.POLLIN)
            poller.poll(min(remaining, 0.5) * 1000)
            self._read_available()
        return self.ready

    # -- selector integration (same shape as LoopProcess) --------------------------------------

    def register(self, selector: selectors.BaseSelector) -> None:
        self._selector = selector
        selector.register(self.sock, selectors.EVENT_READ, (self, self.sock, None))

    def service(self, selector: selectors.BaseSelector, sock: socket.socket, reader: Any = None) -> None:
        """Read every record available now (ready, exit reports, replies)."""
        self._read_available()

    def flush(self, selector: selectors.BaseSelector) -> None:
        """Nothing is ever queued for the zygote (requests are sent whole)."""

    def _read_available(self) -> None:
        while not self._eof:
            try:
                data = self.sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self._on_death()
                return
            try:
                message: ToSupervisor = decode_message(data, TO_SUPERVISOR)
            except ProtocolError as err:  # a zygote that talks nonsense cannot be trusted to fork
                self.error = f"malformed record from zygote: {err}"
                self._on_death()
                self.popen.kill()
                return
            self._HANDLERS[type(message)](self, message)

    def _on_ready(self, message: Ready) -> None:
        self.ready_at, self.info = time.monotonic(), message
        log.info("zygote ready", python=str(self.python), pid=self.pid, warmup_s=message.warmup_s,
                 modules=message.modules, prewarm_s=message.prewarm_s, configured_after_s=message.configured_after_s)

    def _on_failed(self, message: Failed) -> None:
        self.error = message.reason
        log.error("zygote failed to start", python=str(self.python), pid=self.pid, error=self.error)

    def _on_reply(self, message: Forked | ForkFailed) -> None:
        self._replies[message.id] = message

    def _on_rejected(self, message: Rejected) -> None:
        """The zygote could not take our last request: a bug on one side. It answers that request."""
        log.error("zygote rejected a request", python=str(self.python), pid=self.pid, reason=message.reason)
        self.last_rejection = message.reason
        if self._pending is not None:
            self._replies[self._pending] = message

    def _on_exited(self, message: Exited) -> None:
        self._children.setdefault(message.pid, _Child(pidfd=None)).returncode = message.returncode

    #: The handler table: one entry per message a zygote may send (``TO_SUPERVISOR``).
    _HANDLERS: ClassVar[dict[type[ToSupervisor], Callable[..., None]]] = {
        Ready: _on_ready, Failed: _on_failed, Forked: _on_reply, ForkFailed: _on_reply,
        Rejected: _on_rejected, Exited: _on_exited,
    }

    def _on_death(self, expected: bool = False) -> None:
        """The zygote is gone; PDEATHSIG kills its children. Make sure, through the pidfds."""
        if self._eof:
            return
        self._eof = True
        if self._selector is not None:
            try:
                self._selector.unregister(self.sock)
            except (KeyError, ValueError):
                pass
        self.sock.close()
        live = [pid for pid, child in self._children.items() if child.returncode is None]
        for pid in live:
            self.send_signal(pid, signal.SIGKILL)
        if expected:
            log.info("zygote stopped", python=str(self.python), pid=self.pid, children=live)
            return
        self.error = self.error or "zygote died"
        log.error("zygote died", python=str(self.python), pid=self.pid, children=live)

    # -- forking -------------------------------------------------------------------------------

    def fork(self, name: str, env: Mapping[str, str], cwd: Path, requests_sock: socket.socket,
             output_sock: socket.socket, log_sock: socket.socket, timeout: float = FORK_TIMEOUT) -> int:
        """Fork a loop process; returns its pid. Raises ``ZygoteError`` if the zygote cannot."""
        if not self.ready:
            raise ZygoteError(f"zygote for {self.python} is not ready ({self.error or 'starting'})")
        request_id, self._next_id = self._next_id, self._next_id + 1
        fds = [requests_sock.fileno(), output_sock.fileno(), log_sock.fileno()]
        deadline = time.monotonic() + timeout
        self._pending = request_id
        try:
            self._send(Fork(id=request_id, name=name, env=dict(env), cwd=str(cwd)), fds, deadline)
            while (reply := self._replies.pop(request_id, None)) is None:
                self._wait(select.POLLIN, deadline)
                self._read_available()
                if self._eof:
                    raise ZygoteError(f"zygote for {self.python} died during a fork")
        finally:
            self._pending = None
        if not isinstance(reply, Forked):
            raise ZygoteError(f"zygote for {self.python} could not fork: {reply.reason}")
        pid = reply.pid
        child = self._children.setdefault(pid, _Child(pidfd=None))
        if child.returncode is None:
            try:
                child.pidfd = os.pidfd_open(pid)
            except ProcessLookupError:  # already exited and reaped: its exit report is on its way
                pass
            except OSError:  # no pidfds (Linux < 5.3): plain pids, as for exec'd loops
                pass
        return pid

    def _send(self, message: ToZygote, fds: list[int], deadline: float) -> None:
        while True:
            try:
                send(self.sock, message, fds)
                return
            except ProtocolError as err:  # e.g. an environment over MAX_RECORD: exec instead
                raise ZygoteError(f"cannot send {message.TYPE} to the zygote for {self.python}: {err}") from err
            except (BlockingIOError, InterruptedError):
                self._wait(select.POLLOUT, deadline)
            except OSError as err:
                if err.errno == errno.EMSGSIZE:  # the kernel allowed less than MAX_RECORD: exec instead
                    raise ZygoteError(f"{message.TYPE} record too big for the zygote socket: {err}") from err
                self._on_death()
                raise ZygoteError(f"zygote for {self.python} is gone: {err}") from err

    def _wait(self, events: int, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ZygoteError(f"zygote for {self.python} did not answer a fork request in time")
        poller = select.poll()
        poller.register(self.sock, events | select.POLLHUP)
        poller.poll(remaining * 1000)

    # -- forked children -----------------------------------------------------------------------

    def exit_status(self, pid: int) -> tuple[int, bool] | None:
        """(returncode, lost with the zygote) of a forked loop, None while it runs.

        Reads pending reports first, so it is current even between selector passes.
        """
        self._read_available()
        child = self._children.get(pid)
        if child is not None and child.returncode is None and self._eof and _exited(pid, child.pidfd):
            child.returncode, child.lost_with_zygote = ZYGOTE_DIED, True
        if child is None or child.returncode is None:
            return None
        return child.returncode, child.lost_with_zygote

    def send_signal(self, pid: int, signum: int) -> None:
        """Signal a forked loop through its pidfd: never a recycled pid."""
        child = self._children.get(pid)
        if child is None or child.returncode is not None:
            return
        try:
            if child.pidfd is not None:
                signal.pidfd_send_signal(child.pidfd, signum)
            else:
                os.kill(pid, signum)
        except ProcessLookupError:
            pass

    def release(self, pid: int) -> None:
        """Forget an exited child (closes its pidfd)."""
        child = self._children.get(pid)
        if child is not None and child.returncode is not None:
            del self._children[pid]
            if child.pidfd is not None:
                os.close(child.pidfd)

    def handle(self, pid: int) -> ForkedProcess:
        """The ``ProcessHandle`` of forked child ``pid``."""
        return ForkedProcess(self, pid)

    # -- shutdown ------------------------------------------------------------------------------

    def close(self, timeout: float = 2.0) -> None:
        """Stop the zygote: closing its socket ends it, and (PDEATHSIG) every child still running.

        Stop the loops first (SIGTERM, then reap them) if they should end gracefully.
        """
        self._on_death(expected=True)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


def _exited(pid: int, pidfd: int | None) -> bool:
    """Has ``pid`` (not our child: no waitpid) exited? A zombie has."""
    if pidfd is not None:
        return bool(select.select([pidfd], [], [], 0)[0])
    stat = read_stat(pid)  # None: no such process (any more)
    return stat is None or stat.state in ("Z", "X")


@dataclass
class ForkedProcess:
    """``ProcessHandle`` (see ``loop_process``) of a loop forked by a zygote."""

    zygote: Zygote
    pid: int
    returncode: int | None = None
    lost_with_zygote: bool = False

    def poll(self) -> int | None:
        if self.returncode is None and (status := self.zygote.exit_status(self.pid)) is not None:
            self.returncode, self.lost_with_zygote = status
            self.zygote.release(self.pid)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            self.zygote.send_signal(self.pid, signum)

    @property
    def exit_note(self) -> str | None:
        """Why, beyond the return code: set when the zygote died and took this loop with it."""
        if self.lost_with_zygote:
            return f"with its zygote (pid {self.zygote.pid})"
        return None
