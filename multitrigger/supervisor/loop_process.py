"""
One loop OS process: start it, read its three sockets, write responses, kill it.

The process runs its loop's interpreter (``<venv>/bin/python``), so a bundle's loop really runs
that bundle's environment. It is started one of two ways, behind one ``ProcessHandle``:

* ``spawn``: exec'd cold (a ``subprocess.Popen``; ~5 s to import Airflow). It asks the kernel to
  SIGKILL it when the supervisor dies (``PR_SET_PDEATHSIG``) and, with limits, joins its cgroup
  before the exec (``multitrigger.cgroups.join``).
* ``spawn_forked``: forked by that interpreter's warm zygote (``multitrigger.loop.zygote``; ~40 ms,
  shares the zygote's memory). Its exit status comes from the zygote's reports; it has PDEATHSIG
  towards the zygote, which has it towards the supervisor.

Either way not even a SIGKILL of the supervisor leaves a loop behind.

This class knows nothing about triggers: it turns bytes into frames and lines and hands them to
callbacks; ``LoopSlot`` gives them meaning. What a loop writes costs the supervisor bounded memory:
frames are capped (``protocol.MAX_FRAME_BYTES``), lines are cut (``output.LineCutter``), and
responses the loop does not read stop its requests from being read (``OUTBOX_LIMIT``).
"""

from __future__ import annotations

import contextlib
import selectors
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import structlog

from airflow.sdk.execution_time.comms import _RequestFrame
from multitrigger.cgroups.join import join_or_exit, procs_files
from multitrigger.pdeathsig import die_with_parent
from multitrigger.protocol import ENV_LOG_FD, ENV_LOOP_NAME, FrameError, FrameReader, encode_response
from multitrigger.supervisor.output import CutLine, LineCutter, OutputLimits
from multitrigger.supervisor.zygote_client import ForkedProcess, Zygote, ZygoteError

log = structlog.get_logger(__name__)

#: Bytes read per ``recv``, and per service call from a request socket.
RECV_BYTES = 256 * 1024
#: Bytes read per service call from an output or log socket.
BULK_BYTES = 4 * 1024 * 1024
#: Responses queued for a loop beyond this stop its requests from being read until it reads
#: them: a loop that writes requests but never reads cannot grow the supervisor's memory.
OUTBOX_LIMIT = 8 * 1024 * 1024
#: ``drain_logs`` reads at most this much: what was in flight before a report, not a live flood.
DRAIN_LIMIT = 4 * 1024 * 1024
#: The loop's end of its request socket holds this much unread (``SO_SNDBUF``, which the kernel
#: caps at ``net.core.wmem_max``), so a push of thousands of events leaves in one write
#: (``_loop_sockets``).
REQUEST_SEND_BUFFER = 4 * 1024 * 1024


class ProcessHandle(Protocol):
    """What ``LoopProcess`` needs of a process; ``subprocess.Popen`` and ``ForkedProcess`` have it."""

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None:
        """The exit status once ended (negative = killed by that signal), else None."""

    def send_signal(self, signum: int) -> None:
        """Signal the process unless it has already been reaped."""


@dataclass
class LoopCallbacks:
    """Where a loop process delivers what it reads."""

    on_frame: Callable[[_RequestFrame], None]
    on_output: Callable[[list[bytes | CutLine]], None]  # stdout/stderr lines (see LineCutter.feed)
    on_log_lines: Callable[[list[bytes | CutLine]], None]  # JSON log lines
    on_broken: Callable[[str], None]


@dataclass
class LoopProcess:
    """A running loop child and the supervisor ends of its sockets."""

    name: str
    handle: ProcessHandle
    requests: socket.socket
    output: socket.socket
    logs: socket.socket
    started_at: float = field(default_factory=time.monotonic)
    _frames: FrameReader = field(default_factory=FrameReader)
    _outbox: bytearray = field(default_factory=bytearray)
    _open: set[socket.socket] = field(default_factory=set)
    _log_reader: Callable[[bytes], None] = field(default=lambda _data: None)
    _at_eof: dict[socket.socket, Callable[[], None]] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.handle.pid

    @property
    def popen(self) -> subprocess.Popen | None:
        """The ``Popen`` of a cold-started loop; None for a forked one."""
        return self.handle if isinstance(self.handle, subprocess.Popen) else None

    @property
    def forked(self) -> bool:
        return isinstance(self.handle, ForkedProcess)

    @classmethod
    def spawn(cls, name: str, argv: Sequence[str], env: dict[str, str], cwd: Path, zygote: Zygote | None = None) -> LoopProcess:
        """Exec ``argv`` with fd 0 = request socket, fd 1/2 = output socket, a JSON log socket.

        With a ``zygote`` of the same interpreter (``argv[0]``) that is ready, fork from it instead;
        if it cannot fork (starting, dead, slow to answer), exec as before. Never waits for it.
        """
        if zygote is not None and zygote.ready and str(zygote.python) == str(argv[0]):
            try:
                return cls.spawn_forked(name, zygote, env, cwd)
            except ZygoteError as err:
                log.warning("zygote could not fork; exec'ing the loop", loop=name, error=str(err))
        (req_parent, req_child), (out_parent, out_child), (log_parent, log_child) = _loop_sockets()
        child_env = {**env, ENV_LOG_FD: str(log_child.fileno()), ENV_LOOP_NAME: name}
        try:
            popen = subprocess.Popen(
                list(argv),
                stdin=req_child,
                stdout=out_child,
                stderr=out_child,
                pass_fds=(log_child.fileno(),),
                env=child_env,
                cwd=cwd,
                close_fds=True,
                start_new_session=True,
                preexec_fn=_preexec(procs_files(env)),
            )
        except BaseException:
            for sock in (req_parent, out_parent, log_parent):
                sock.close()
            raise
        finally:
            for sock in (req_child, out_child, log_child):
                sock.close()
        return cls._wrap(name, popen, req_parent, out_parent, log_parent)

    @classmethod
    def spawn_forked(cls, name: str, zygote: Zygote, env: dict[str, str], cwd: Path) -> LoopProcess:
        """Fork the loop from ``zygote``: same sockets, env and cwd as ``spawn`` would give it.

        Raises ``ZygoteError`` (nothing left open) if the zygote cannot fork now; exec instead.
        """
        (req_parent, req_child), (out_parent, out_child), (log_parent, log_child) = _loop_sockets()
        try:
            pid = zygote.fork(name, {**env, ENV_LOOP_NAME: name}, cwd, req_child, out_child, log_child)
        except BaseException:
            for sock in (req_parent, out_parent, log_parent):
                sock.close()
            raise
        finally:
            for sock in (req_child, out_child, log_child):
                sock.close()
        return cls._wrap(name, zygote.handle(pid), req_parent, out_parent, log_parent)

    @classmethod
    def _wrap(cls, name: str, handle: ProcessHandle, req: socket.socket, out: socket.socket, logs: socket.socket) -> LoopProcess:
        for sock in (req, out, logs):
            sock.setblocking(False)
        proc = cls(name=name, handle=handle, requests=req, output=out, logs=logs)
        proc._open = {req, out, logs}
        return proc

    def register(self, selector: selectors.BaseSelector, callbacks: LoopCallbacks, limits: OutputLimits = OutputLimits()) -> None:
        """Serve this loop's sockets from the supervisor's one selector."""
        out_lines, log_lines = LineCutter(limits.max_log_line_bytes), LineCutter(limits.max_log_line_bytes)
        readers = {
            self.requests: lambda data: self._read_frames(data, callbacks),
            self.output: lambda data: callbacks.on_output(out_lines.feed(data)),
            self.logs: lambda data: callbacks.on_log_lines(log_lines.feed(data)),
        }
        for sock, reader in readers.items():
            selector.register(sock, selectors.EVENT_READ, (self, sock, reader))
        self._log_reader = readers[self.logs]
        self._at_eof = {self.output: lambda: callbacks.on_output(out_lines.flush()),
                        self.logs: lambda: callbacks.on_log_lines(log_lines.flush())}

    def service(self, selector: selectors.BaseSelector, sock: socket.socket, reader: Callable[[bytes], None]) -> int:
        """Read what is available on ``sock``; close it on EOF. Returns the bytes read.

        Output and log sockets are read up to ``BULK_BYTES`` at a time: reading (and cutting, and
        discarding past the budget) is cheap, and a loop that writes a lot must not wait on the
        supervisor's pace, or its event loop stalls.
        """
        got = 0
        while got < (RECV_BYTES if sock is self.requests else BULK_BYTES):
            try:
                data = sock.recv(RECV_BYTES)
            except (BlockingIOError, InterruptedError):
                return got
            except OSError:
                data = b""
            if not data:
                self._close(selector, sock)
                return got
            reader(data)
            got += len(data)
        return got

    def drain_logs(self, selector: selectors.BaseSelector) -> None:
        """Read every log line the loop has already sent.

        A loop writes a trigger's last log lines before it reports the trigger finished, but on
        another socket, so the report can overtake them; draining first keeps them in the
        trigger's own log file. Bounded (``DRAIN_LIMIT``): a loop that floods its log socket
        cannot keep the supervisor here.
        """
        drained = 0
        while drained < DRAIN_LIMIT and self.logs in self._open:
            if not (got := self.service(selector, self.logs, self._log_reader)):
                return
            drained += got

    def _read_frames(self, data: bytes, callbacks: LoopCallbacks) -> None:
        try:
            frames = self._frames.feed(data)
        except FrameError as err:
            callbacks.on_broken(f"malformed frame from loop: {err}")
            return
        for frame in frames:
            callbacks.on_frame(frame)

    def respond(self, selector: selectors.BaseSelector, request_id: int, body: dict | None, error: dict | None = None) -> None:
        """Queue one response frame and send what the socket takes now, without ever blocking.

        A loop whose event loop is stuck stops reading; its responses wait here instead of
        stalling the supervisor (and with it every other loop).
        """
        if self.requests not in self._open:
            return
        self._outbox.extend(encode_response(request_id, body, error))
        self.flush(selector)

    def flush(self, selector: selectors.BaseSelector) -> None:
        """Send queued responses; watch for writability while some remain, and stop reading
        requests while more than ``OUTBOX_LIMIT`` wait."""
        if self.requests not in self._open:
            return
        try:
            sent = self.requests.send(self._outbox) if self._outbox else 0
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._outbox.clear()
            sent = 0
        del self._outbox[:sent]
        key = selector.get_key(self.requests)
        wanted = ((selectors.EVENT_READ if len(self._outbox) < OUTBOX_LIMIT else 0)
                  | (selectors.EVENT_WRITE if self._outbox else 0))
        if key.events != wanted:
            selector.modify(self.requests, wanted, key.data)

    def _close(self, selector: selectors.BaseSelector, sock: socket.socket) -> None:
        if sock in self._open:
            self._open.discard(sock)
            selector.unregister(sock)
            sock.close()
        if at_eof := self._at_eof.pop(sock, None):  # its unfinished line still counts
            at_eof()

    def close(self, selector: selectors.BaseSelector) -> None:
        for sock in list(self._open):
            self._close(selector, sock)

    def poll_exit(self) -> int | None:
        """The exit status if the process has ended (negative = killed by that signal)."""
        return self.handle.poll()

    def signal(self, signum: int) -> None:
        """Signal the process; a no-op once it has been reaped (never hits a recycled pid)."""
        try:
            self.handle.send_signal(signum)
        except ProcessLookupError:
            pass

    def exit_reason(self, returncode: int) -> str:
        """``describe_exit`` plus how the loop was lost, e.g. 'killed by SIGKILL with its zygote'."""
        note = getattr(self.handle, "exit_note", None)
        return f"{describe_exit(returncode)} {note}" if note else describe_exit(returncode)


def _preexec(cgroup_procs: list[str]) -> Callable[[], None]:
    """In the forked child, before the exec: join the loop's cgroup (so the whole interpreter is
    charged to it), then die with the supervisor."""

    def preexec() -> None:
        join_or_exit(cgroup_procs)
        die_with_parent()

    return preexec


def read_order(ready: tuple[selectors.SelectorKey, int]) -> int:
    """Sort key for ``select()`` results: requests, check-ins and zygote reports (0) are served
    before any loop's output and log sockets (1)."""
    data = ready[0].data
    return int(data is not None and isinstance(data[0], LoopProcess) and data[1] is not data[0].requests)


def describe_exit(returncode: int) -> str:
    """'exited with code 1' / 'killed by SIGKILL'."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"


def _loop_sockets() -> list[tuple[socket.socket, socket.socket]]:
    """A loop's three socketpairs (requests, output, logs), or none: at ``EMFILE`` the pairs already
    made are closed here, at once, not left to the garbage collector while the supervisor is short
    of fds.

    The loop's end of the request pair may hold ``REQUEST_SEND_BUFFER`` unread bytes, as far as the
    kernel allows. A loop's asyncio transport writes what the socket takes at once and the rest when
    the socket is writable again, which the loop sees once per loop iteration. In a burst an
    iteration is one step of every ready trigger: 5000 "trigger completed" records, ~1 s on this
    2-core machine. With the default 208 KiB, a push of 5000 events (~1 MB) left its loop over about
    that second, after its triggers had all completed (20,000 due at once: the pushes reached the
    supervisor 2.1-2.4 s after the due time; with this, 1.1-1.5 s). The memory is the kernel's,
    taken only while the supervisor has not read what was written. Best effort: a kernel that
    refuses leaves the default.
    """
    pairs: list[tuple[socket.socket, socket.socket]] = []
    try:
        for _ in range(3):
            pairs.append(socket.socketpair())
    except BaseException:
        for pair in pairs:
            for sock in pair:
                sock.close()
        raise
    with contextlib.suppress(OSError):
        pairs[0][1].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, REQUEST_SEND_BUFFER)
    return pairs
