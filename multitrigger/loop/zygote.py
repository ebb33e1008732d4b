r"""
The zygote: one warm interpreter per loop interpreter that forks ready loop processes.

Why: exec'ing a loop means a fresh interpreter plus ``import airflow`` — about 5 s and 120 MB of
private memory per loop. A crashed loop must run its triggers again within about a second, and N
loops on one interpreter should share most of their memory. So the supervisor starts, per distinct
interpreter, ``<python> -c <bootstrap_code("multitrigger.loop.zygote")>`` (works in bundle venvs
without multitrigger installed). It imports everything a loop needs, runs ``gc.collect();
gc.freeze()`` (without the freeze a child's first full collection writes to every object header and
un-shares most pages), stays single-threaded, and then only forks. A forked loop is the same as an
exec'd one from ``multitrigger.loop.__main__.main`` on: same fds, environment, cwd and signals.

Checked against Airflow 3.3.2: Airflow's configuration is read once, at import, in the zygote. The
zygote imports Airflow under a loop environment (``supervisor.launch.loop_env``), so every loop of
an interpreter gets the same ``[triggerer]``/``[logging]`` settings and no secrets either way; only
``AIRFLOW_HOME`` (an empty private directory) differs from what the loop's own env says.

Staged start (``MULTITRIGGER_ZYGOTE_STAGED=1``, see ``supervisor.prestart``): the supervisor starts
the zygote before it has imported Airflow itself, so it cannot compute the loop environment yet. The
zygote is then exec'd with every ``AIRFLOW__*`` variable removed, imports ``PREWARM_MODULES`` (the
third-party two thirds of a loop's import time, none of which reads Airflow configuration) and waits
for a ``configure`` message with the loop environment; only then does it import Airflow. Start-up overlaps the
supervisor's own imports instead of following them.

Control socket (fd 0) and its messages: ``multitrigger.zygote_protocol`` (the wire spec). Requests
are dispatched through a handler table keyed by message type.

``sys.path``: the zygote applies the supervisor-wide trigger-code entries (``PYTHONPATH``, plugins
folder, config directory: ``multitrigger.loop.sys_path``) before it imports Airflow, as the stock
triggerer has them at import; a forked loop replaces them with its own loop's entries
(``python_path``, bundle roots) in ``loop.__main__.main`` before any user code is imported.

In the child, first of all, the loop joins its cgroup when it has one (``MULTITRIGGER_CGROUP_PROCS``,
``multitrigger.cgroups.join``). Pages it shares with the zygote (the imported Airflow, frozen by
``gc.freeze()``) stay charged to the zygote's cgroup; the loop is charged only for the pages it
touches first or copies on write after the fork. Then: fd 0 = requests, fd 1 and 2 = output, and
the log socket goes onto the fd of the JSON log channel the zygote configured before forking
(``prepare_loop``), whose number goes into ``MULTITRIGGER_LOG_FD``.

What a forked loop writes to is what it does not share: every page it touches un-shares (copy on
write), and everything it builds is its own. So whatever is the same for every loop is done here,
once: the imports, Airflow's configuration (without the ORM, which a loop never uses: ``warm``),
the log channel and the ORM block (``prepare_loop``); and a loop avoids work that writes across the
whole heap (``importlib.invalidate_caches``: ``loop.sys_path``; per-process pydantic adapters:
``loop.runner``). Measured on Airflow 3.3.2 with 4 idle loops: 18 MB private per loop before, 10.6 after.

The zygote exits when the control socket closes; its children have ``PR_SET_PDEATHSIG=SIGKILL``
and die with it, and it has the same towards the supervisor.
"""

from __future__ import annotations

import gc
import importlib
import os
import random
import selectors
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from typing import NoReturn

from multitrigger.cgroups.join import join_or_exit, procs_files
from multitrigger.heap import release_free_heap
from multitrigger.loop import sys_path
from multitrigger.pdeathsig import set_pdeathsig
from multitrigger.unused_imports import skip_unused_imports
from multitrigger.zygote_protocol import (
    CONTROL_FD, ENV_PRELOAD, ENV_STAGED, FORK_FDS, RECV_SIZE, TO_ZYGOTE, Configure, Exited, Failed, Fork,
    ForkFailed, Forked, ProtocolError, Ready, Rejected, ToZygote, decode, send,
)

#: Modules imported when the zygote became ready (set in the zygote; its children inherit it).
PRELOADED: frozenset[str] = frozenset()
_ENV_LOG_FD = "MULTITRIGGER_LOG_FD"  # = multitrigger.protocol.ENV_LOG_FD (not imported: see warm())
_ENV_NO_ORM = "_AIRFLOW__REEXECUTED_PROCESS"  # see warm()
#: The fd of the JSON log channel the zygote configured (``prepare_loop``); a forked loop puts its
#: own log socket on this number.
LOG_CHANNEL_FD: int | None = None

#: A loop cannot run without these; failing to import one fails the zygote (the supervisor then
#: exec's loops cold and they report the same error themselves).
REQUIRED_MODULES = (
    "airflow",
    "airflow.jobs.triggerer_job_runner",
    "airflow.sdk.execution_time.supervisor",
    "airflow.sdk.execution_time.task_runner",
    "airflow.sdk.log",
    "multitrigger.protocol",
    "multitrigger.loop.blame",
    "multitrigger.loop.runner",
    "multitrigger.loop.__main__",
    "greenback",
    "anyio",
    "anyio._backends._asyncio",
    "msgspec",
    "structlog",
    "pendulum",
)
#: Third-party modules a loop imports (directly or through Airflow) that read no Airflow
#: configuration: a staged zygote imports them before it knows its loop environment. Measured on
#: Airflow 3.3.2 with ``-X importtime``: ~2.4 s of the ~3.6 s a loop's imports take here. Best
#: effort: a module missing from a bundle's venv is skipped (Airflow then imports what it needs).
PREWARM_MODULES = (
    "sqlalchemy", "sqlalchemy.orm", "sqlalchemy.ext.associationproxy", "structlog",
    "structlog.dev", "structlog.processors", "structlog.tracebacks", "jsonschema", "isoduration", "arrow", "httpx", "httpcore", "jinja2", "click",
    "pydantic", "pydantic_core", "pendulum", "fsspec", "fsspec.implementations.local",
    "opentelemetry.sdk.resources", "opentelemetry.sdk.trace", "upath", "yaml", "psutil", "dill", "attr",
    "typing_extensions", "pathspec", "importlib_metadata", "dateutil.tz", "h11",
    "cryptography.fernet", "msgspec", "anyio", "anyio._backends._asyncio", "greenback", "tenacity",
    "lazy_object_proxy", "methodtools", "uuid6", "termcolor", "tabulate", "itsdangerous", "setproctitle",
)
#: What a loop still imported after start-up, by its first trigger and first event, measured on
#: Airflow 3.3.2 (tests/test_zygote.py checks it after a first event). Best effort.
LAZY_MODULES = (
    "airflow.triggers.base",
    "airflow.sdk._shared.logging.factory",
    "airflow.sdk._shared.logging.remote",
    "setproctitle",
)


def prewarm() -> None:
    """Stage one of a staged start: import what needs no Airflow configuration."""
    for name in PREWARM_MODULES:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - see PREWARM_MODULES
            pass


def await_environment(ctl: socket.socket) -> None:
    """Stage two: block until the supervisor sends the loop environment, then adopt it.

    Exits quietly if the supervisor goes away first (e.g. ``multitrigger run`` rejected its flags).
    """
    try:
        data = ctl.recv(RECV_SIZE)
    except OSError:
        data = b""
    if not data:
        os._exit(0)
    message = decode(data, (Configure,))
    os.environ.clear()
    os.environ.update(message.env)


def warm(extra: list[str]) -> int:
    """Import what a loop imports, so a forked loop starts without importing anything big.

    Airflow is imported without its ORM: a loop never uses the metadata DB (``block_orm_access``),
    yet ``import airflow`` would build a sync and an async SQLAlchemy engine for the private home's
    SQLite file, which every forked loop then disposes of in an ``os.register_at_fork`` hook
    (``airflow.settings.configure_orm``), un-sharing ~1.6 MB of the zygote's pages each (measured).
    ``settings.initialize`` skips ``configure_orm`` for ``_AIRFLOW__REEXECUTED_PROCESS=1`` (checked
    against Airflow 3.3.2; the task runner's re-exec flag, read nowhere else at import), so it is set
    for the imports only; ``conf.mask_secrets()``, which it skips too, is called here instead.
    """
    os.environ[_ENV_NO_ORM] = "1"
    try:
        for name in REQUIRED_MODULES:
            importlib.import_module(name)
    finally:
        del os.environ[_ENV_NO_ORM]
    from airflow.configuration import conf

    conf.mask_secrets()
    for name in (*LAZY_MODULES, *extra):
        try:
            importlib.import_module(name.strip())
        except Exception:  # noqa: BLE001 - the loop reports it itself if it needs the module
            pass
    return len(sys.modules)


def prepare_loop() -> int:
    """Do, once and before any fork, the loop set-up that is the same for every loop: send logs over
    a JSON channel and block ORM access (``multitrigger.loop.__main__.setup``). Returns the channel's fd.

    Why: done in each forked loop, configuring logging walks every logger and handler the ~1600
    imported modules made, un-sharing ~3.5 MB of the zygote's pages per loop (measured). Done here,
    a forked loop only moves its own log socket onto the channel's fd (``Zygote._child``); the
    channel is a dup of the zygote's stderr until then, so the zygote's own log lines (rare) go where
    its tracebacks go.
    """
    global LOG_CHANNEL_FD
    from multitrigger.loop.__main__ import setup

    LOG_CHANNEL_FD = os.dup(2)
    setup(LOG_CHANNEL_FD, reset_signals=False)  # a forked loop resets its signals itself
    return LOG_CHANNEL_FD


class Zygote:
    """The serving side: waits on the control socket and on SIGCHLD; never starts a thread."""

    def __init__(self, ctl: socket.socket) -> None:
        self.ctl = ctl
        self.pid = os.getpid()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(ctl, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._children: set[int] = set()
        #: The handler table: one entry per message the supervisor may send (``TO_ZYGOTE``).
        self.handlers: dict[type[ToZygote], Callable[..., None]] = {
            Fork: self._on_fork,
            Configure: self._on_late_configure,
        }

    def serve(self) -> NoReturn:
        # A Python-level handler is needed for SIGCHLD to reach the wake-up fd (SIG_DFL ignores it).
        signal.signal(signal.SIGCHLD, lambda _s, _f: None)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        while True:
            for key, _mask in self._selector.select():
                if key.fileobj is self._wake_r:
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except (BlockingIOError, InterruptedError):
                        pass
                else:
                    self._read_request()
            self._reap()

    def _read_request(self) -> None:
        try:
            data, fds, _flags, _addr = socket.recv_fds(self.ctl, RECV_SIZE, FORK_FDS)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, fds = b"", []
        if not data:  # the supervisor is gone or closed us: so are our children (PDEATHSIG)
            os._exit(0)
        try:
            message: ToZygote = decode(data, TO_ZYGOTE)
        except ProtocolError as err:
            _close(fds)
            send(self.ctl, Rejected(reason=str(err)))
            return
        self.handlers[type(message)](message, fds)

    def _on_late_configure(self, message: Configure, fds: list[int]) -> None:
        _close(fds)
        send(self.ctl, Rejected(reason="configure after start-up: the environment is fixed once Airflow is imported"))

    def _on_fork(self, request: Fork, fds: list[int]) -> None:
        if len(fds) != FORK_FDS:
            _close(fds)
            send(self.ctl, ForkFailed(id=request.id, reason=f"fork request with {len(fds)} fds, not {FORK_FDS}"))
            return
        for stream in (sys.stdout, sys.stderr):  # or the child would print our buffer again
            try:
                stream.flush()
            except (AttributeError, OSError, ValueError):
                pass
        try:
            pid = os.fork()
        except OSError as err:
            pid = -1
            send(self.ctl, ForkFailed(id=request.id, reason=f"fork: {err}"))
        if pid == 0:
            self._child(request, fds)  # never returns
        _close(fds)
        if pid > 0:
            self._children.add(pid)
            send(self.ctl, Forked(id=request.id, pid=pid))

    def _reap(self) -> None:
        while self._children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._children.discard(pid)
            send(self.ctl, Exited(pid=pid, returncode=os.waitstatus_to_exitcode(status)))

    def _child(self, request: Fork, fds: list[int]) -> NoReturn:
        """Become a loop process; see the module docstring. Never returns into the zygote."""
        code = 1
        # Its cgroup first (``multitrigger.cgroups.join``): every page this loop touches from now
        # on is charged to its own limits, not the zygote's.
        join_or_exit(procs_files(request.env))
        try:
            os.setsid()
            set_pdeathsig(signal.SIGKILL)
            if os.getppid() != self.pid:  # the zygote died before prctl: nobody would kill us
                os._exit(1)
            signal.set_wakeup_fd(-1)
            for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
                signal.signal(signum, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)  # as a fresh interpreter has
            self._selector.close()
            for sock in (self._wake_r, self._wake_w, self.ctl):
                sock.close()  # ctl is fd 0: free now, and never the loop's request socket
            requests_fd, output_fd, log_fd = fds  # all > 2 and not the channel's: received while those were open
            channel = LOG_CHANNEL_FD
            assert channel is not None  # prepare_loop ran before serve()
            os.dup2(requests_fd, 0)
            os.dup2(output_fd, 1)
            os.dup2(output_fd, 2)
            os.dup2(log_fd, channel)  # the configured JSON log channel now writes to this loop's socket
            # fds the zygote inherited or received; no Python object owns one (checked), but the channel's
            os.closerange(3, channel)
            os.closerange(channel + 1, os.sysconf("SC_OPEN_MAX"))
            os.environ.clear()
            os.environ.update(request.env)
            os.environ[_ENV_LOG_FD] = str(channel)
            os.chdir(request.cwd)
            random.seed()
            from multitrigger.loop import __main__ as loop_main

            sys.argv = [loop_main.__file__ or "multitrigger.loop"]
            _set_title(f"multitrigger loop {request.name} (forked)")
            loop_main.main(prepared=True)  # ends in os._exit
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # noqa: BLE001 - the child must never return into the zygote
            try:
                traceback.print_exc()
                sys.stderr.flush()
            except BaseException:  # noqa: BLE001
                pass
        os._exit(code)


def _close(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def _set_title(title: str) -> None:
    try:
        import setproctitle  # Airflow 3.3.2 depends on it; optional here

        setproctitle.setproctitle(title)
    except Exception:  # noqa: BLE001 - cosmetic
        pass


def main() -> NoReturn:
    skip_unused_imports()  # before anything imports structlog or httpx (multitrigger.unused_imports)
    ctl = socket.socket(fileno=CONTROL_FD)  # SOCK_SEQPACKET, detected from the fd
    started = time.monotonic()
    extra = [m for m in os.environ.get(ENV_PRELOAD, "").split(",") if m.strip()]
    timings: dict[str, float] = {}
    try:
        if os.environ.get(ENV_STAGED) == "1":
            prewarm()
            timings["prewarm_s"] = round(time.monotonic() - started, 3)
            await_environment(ctl)
            timings["configured_after_s"] = round(time.monotonic() - started, 3)
        sys_path.apply()  # the supervisor-wide entries; a forked loop applies its own (loop.__main__)
        modules = warm(extra)
        prepare_loop()
        # Airflow 3.3.2 starts no thread at import; a thread here would make fork() unsafe.
        threads = len(os.listdir("/proc/self/task"))
        if threads != 1:
            raise RuntimeError(f"zygote has {threads} threads after imports; fork would be unsafe")
    except BaseException as err:  # noqa: BLE001
        send(ctl, Failed(reason="".join(traceback.format_exception_only(type(err), err)).strip()))
        traceback.print_exc()
        os._exit(1)
    _set_title(f"multitrigger zygote {sys.executable}")
    global PRELOADED
    PRELOADED = frozenset(sys.modules)
    gc.collect()
    release_free_heap()  # what the imports freed stays out of every fork (multitrigger.heap)
    gc.freeze()
    send(ctl, Ready(pid=os.getpid(), python=sys.executable, modules=modules,
                    warmup_s=round(time.monotonic() - started, 3), **timings))
    Zygote(ctl).serve()


if __name__ == "__main__":
    main()
