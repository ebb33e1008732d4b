"""
Per-trigger log files with a bounded number of open file descriptors.

Why: the stock triggerer (Airflow 3.3.2, ``TriggerLoggingFactory`` in
``airflow/jobs/triggerer_job_runner.py``) opens a running trigger's log file at its first line and
keeps it open until the trigger ends: one fd per running trigger. With ~17,000 triggers the
supervisor reached ``RLIMIT_NOFILE`` and *exited* (the next ``open`` raised ``EMFILE`` inside the
stock log consumer), i.e. one team's flood of deferred tasks took down every team. Here the files
are the same files (same path, ``init_log_file``'s permissions, truncated at their first line as
stock does, then appended to), but at most ``max_open`` are open at once: ``LogFiles`` keeps the
most recently written ones open (LRU) and closes the least recently written to make room. Every
line is written at once, as stock's ``structlog.BytesLogger`` flushes every line, so closing a file
loses nothing: one ``os.write`` on the file's fd (no Python file object: a reopen under churn is an
``open`` and a ``close``, ~3 us, not ~8 with ``os.fdopen``'s buffered writer; a line, one syscall
without the buffer's copy and flush). A file deleted from outside while its trigger runs is made
again with ``init_log_file``'s permissions at its next reopen, not the umask's. Reopens are counted
(``LogFiles.reopens``, the health metric ``multitrigger_log_file_reopens_total``): under churn above
``max_open`` every line costs an open and a close on the selector thread, and that count says when
to raise ``max_open_log_files``.

A line that cannot be written at all (``EMFILE``/``ENFILE`` even after closing our own files to
make room, ``ENOSPC``, a permission error) is dropped and counted (``LogFiles.dropped``, per
trigger in the warning), never raised: an exception there would end the stock consumer generator,
and with it every trigger's logs.

``PooledLogFactory`` is the stock factory with the file swapped, and stock's processor chain with
two steps made cheaper, their output unchanged (``multitrigger.supervisor.trigger_log_chain``), (``TriggerStore`` replaces each
factory stock's ``_create_workload`` makes); ``upload_to_remote`` still finds the file through
``_file.name``, as ``airflow.sdk.log.relative_path_from_logger`` reads it (checked against 3.3.2).
"""

from __future__ import annotations

import errno
import math
import os
import resource
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

import attrs
import structlog

from airflow.jobs.triggerer_job_runner import TriggerLoggingFactory
from multitrigger.supervisor import trigger_log_chain

log = structlog.get_logger(__name__)

#: Errors that mean "no fd for you right now": make room among our own files and try once more.
_NO_FD = (errno.EMFILE, errno.ENFILE)
#: A drop warning at most this often (s): a full disk must not flood the supervisor's own log.
DROP_REPORT_EVERY = 10.0


def default_max_open(limit: int | None = None) -> int:
    """Log files kept open when ``[supervisor] max_open_log_files`` is not set: a quarter of the
    soft ``RLIMIT_NOFILE`` (sockets, pipes, DB connections and the health server need the rest),
    between 16 and 4096."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0] if limit is None else limit
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(16, min(4096, soft // 4))


class LogFiles:
    """The open log files, least recently written first; at most ``max_open`` of them."""

    def __init__(self, max_open: int, clock: Callable[[], float] = time.monotonic) -> None:
        if max_open < 1:
            raise ValueError(f"max_open must be >= 1, got {max_open}")
        self.max_open, self.clock = max_open, clock
        self._open: OrderedDict[PooledLogFile, None] = OrderedDict()
        self.dropped = 0  # lines not written, since start
        self._init: LogFileInit | None = None
        self.reopens = 0  # files opened again after the pool closed them, since start
        self._unreported: dict[str, int] = {}  # path → lines dropped since the last warning
        self._reported_at = -DROP_REPORT_EVERY
        # Lines are written on the selector thread; a finished trigger's file is closed on the
        # upload lane (after its upload, as stock does).
        self._lock = threading.Lock()

    @property
    def init(self) -> LogFileInit:
        """How a trigger's log file is made (its config read at the first one)."""
        if self._init is None:
            self._init = LogFileInit.from_config()
        return self._init

    @property
    def open_count(self) -> int:
        return len(self._open)

    def file(self, path: str, init: Callable[[str], object]) -> PooledLogFile:
        return PooledLogFile(self, path, init)

    def write(self, file: PooledLogFile, data: bytes) -> None:
        with self._lock:
            if file.closed:
                return
            try:
                fd = self._handle(file)
                if (written := os.write(fd, data)) < len(data):  # a regular file takes it all; else the rest
                    _write_rest(fd, memoryview(data)[written:])
            except OSError as err:
                self._drop(file, err)

    def _handle(self, file: PooledLogFile) -> int:
        if file.fd is not None:
            self._open.move_to_end(file)
            return file.fd
        while len(self._open) >= self.max_open:
            self._close_oldest()
        if file.opened:
            self.reopens += 1
        try:
            fd = file.open()
        except OSError as err:
            if err.errno not in _NO_FD or not self._open:
                raise
            for _ in range(max(1, len(self._open) // 2)):  # someone else took our fds: give back half
                self._close_oldest()
            fd = file.open()
        self._open[file] = None
        return fd

    def _close_oldest(self) -> None:
        oldest, _ = self._open.popitem(last=False)
        oldest.release()

    def forget(self, file: PooledLogFile) -> None:
        with self._lock:
            self._open.pop(file, None)
            file.release()

    def _drop(self, file: PooledLogFile, err: OSError) -> None:
        self.dropped += 1
        self._unreported[file.name] = self._unreported.get(file.name, 0) + 1
        now = self.clock()
        if now - self._reported_at >= DROP_REPORT_EVERY:
            self._reported_at = now
            log.warning("trigger log lines dropped: cannot write the log file", error=str(err),
                        dropped_total=self.dropped, files=dict(list(self._unreported.items())[:20]))
            self._unreported.clear()

    def close_all(self) -> None:
        with self._lock:
            while self._open:
                self._close_oldest()


class PooledLogFile:
    """One trigger's log file, opened by ``LogFiles`` when written to. Stock truncates the file
    when it first opens it (``"wb"``); so does this, once; later opens append."""

    def __init__(self, pool: LogFiles, path: str, init: Callable[[str], object]) -> None:
        self.pool, self.path, self._init = pool, path, init
        self._relative = path  # as stock's factory gives it: relative to base_log_folder
        self.fd: int | None = None
        self.opened = False  # opened (and truncated) once already: later opens append
        self.closed = False

    @property
    def name(self) -> str:
        """The file's absolute path (``relative_path_from_logger`` reads it, as of a real file)."""
        return self.path

    def open(self) -> int:
        """The fd, opened as ``open(path, "wb")`` the first time, then as ``"ab"`` (``os.open``'s fds
        are close-on-exec, as ``open``'s)."""
        if not self.opened:  # dirs and file with Airflow's permissions; the path made absolute
            if isinstance(self._init, LogFileInit):
                try:
                    self.path, self.fd = self._init.create(self._relative)
                except OSError as err:  # the open's error names the absolute path: ``name`` stays absolute
                    if isinstance(err.filename, str) and os.path.isabs(err.filename):
                        self.path = err.filename
                    raise
            else:
                self.path = str(self._init(self._relative))
                self.fd = os.open(self.path, _TRUNCATE, 0o666)
        else:
            try:  # a reopen: append, never create (one syscall, no stat first)
                self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            except FileNotFoundError:  # deleted from outside since: made again as Airflow makes it
                self.path = str(self._init(self._relative))
                self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        self.opened = True
        return self.fd

    def release(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)

    def write(self, data: bytes) -> None:
        self.pool.write(self, data)

    def flush(self) -> None:
        """Every write is flushed already (``LogFiles.write``)."""

    def fileno(self) -> int:
        """The fd while open, else -1 (never 1: ``relative_path_from_logger`` treats 1 as stdout)."""
        fd = self.fd  # the pool may close it meanwhile, on another thread
        return fd if fd is not None else -1

    def close(self) -> None:
        self.closed = True
        self.pool.forget(self)


def _write_rest(fd: int, rest: memoryview) -> None:
    while rest:
        rest = rest[os.write(fd, rest):]


#: ``open(path, "wb")``'s flags.
_TRUNCATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC


def _stock_init_log_file(relative: str) -> str:
    from airflow.sdk.log import init_log_file

    return str(init_log_file(relative))


#: Folders ``LogFileInit`` remembers having made; past it, it forgets them all (and makes again).
MADE_FOLDERS_MAX = 4096


class LogFileInit:
    """``airflow.sdk.log.init_log_file`` (checked against 3.3.2: ``base_log_folder`` joined with the
    relative path, ``mkdir(parents=True, exist_ok=True)`` of its folder with
    ``file_task_handler_new_folder_permissions``, ``touch`` with ``file_task_handler_new_file_permissions``,
    a warning instead of an error for either), with its three config reads done once per process and
    the folders it made remembered. Stock reads the config on every call: ~60 % of its ~90 us, per
    trigger, on the selector thread (every trigger's first line, and again after a reopen finds the
    file gone). Only a plain absolute ``base_log_folder`` takes this path; anything else is stock's.
    ``create`` is that and the first truncating open in one (a trigger's first line)."""

    def __init__(self, base: str, folder_mode: int, file_mode: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.base, self.folder_mode, self.file_mode = base.rstrip(os.sep), folder_mode, file_mode
        self.plain = os.path.isabs(base) and not base.startswith("//")  # POSIX keeps a leading "//"
        self._made: set[str] = set()
        self.clock = clock
        self._warned: dict[str, float] = {}  # folder -> when its "Could not create" was last logged

    @classmethod
    def from_config(cls) -> LogFileInit:
        from airflow.sdk.configuration import conf

        return cls(conf.get("logging", "base_log_folder"),
                   int(conf.get("logging", "file_task_handler_new_folder_permissions", fallback="0o775"), 8),
                   int(conf.get("logging", "file_task_handler_new_file_permissions", fallback="0o664"), 8))

    def __call__(self, relative: str) -> str:
        if not self.plain or os.path.isabs(relative):
            return _stock_init_log_file(relative)
        full = self._ready(relative)
        try:
            self._touch(full)
        except FileNotFoundError:  # a folder made earlier was removed since: make it again
            self._made.discard(folder := os.path.dirname(full))
            self._make_folder(folder)
            self._touch_or_warn(full)
        except OSError as err:
            log.warning("OSError while changing ownership of the log file. %s", err)
        return full

    def create(self, relative: str) -> tuple[str, int]:
        """``self(relative)`` then ``open(path, "wb")``, in one open: the path and the fd.

        Stock's touch creates a missing file with ``file_mode`` (less the umask) and updates an
        existing one's mtime; the truncating open after it updates that mtime again. One
        ``O_CREAT | O_TRUNC`` open with ``file_mode`` leaves the same file (mode, no content, mtime)
        and skips touch's failing ``utime``, its ``open`` and ``close``: with the folder's
        ``mkdir`` first (below), ~90 us a new trigger instead of ~130 (``LogFiles``, first lines of
        3000 new triggers, median of 5 alternating runs on this machine's ext4), on the selector
        thread, for every trigger's first line. An error raises (the line is dropped
        and counted, ``LogFiles``) without touch's "OSError while changing ownership" warning: a
        file touch cannot make is one the open after it could not make either. Two differences
        remain: an existing file's atime is left as it was (touch set it), and with a
        ``file_mode`` without the owner's write bit the first lines are written (stock's ``"wb"``
        fails on the read-only file its touch made; later reopens fail here too)."""
        if not self.plain or os.path.isabs(relative):
            path = _stock_init_log_file(relative)
            return path, os.open(path, _TRUNCATE, 0o666)
        full = self._ready(relative)
        try:
            return full, os.open(full, _TRUNCATE, self.file_mode)
        except FileNotFoundError:  # a folder made earlier was removed since: make it again
            self._made.discard(folder := os.path.dirname(full))
            self._make_folder(folder)
            return full, os.open(full, _TRUNCATE, self.file_mode)

    def _ready(self, relative: str) -> str:
        """The absolute path of ``relative``, its folder made (unless remembered as made)."""
        # pathlib's parse: empty and "." parts dropped (not "..", as pathlib keeps them too).
        full = os.sep.join([self.base, *(part for part in relative.split(os.sep) if part and part != ".")])
        folder = os.path.dirname(full)
        if folder not in self._made:
            self._make_folder(folder)
        return full

    def _make_folder(self, folder: str) -> None:
        try:
            _mkdir(folder, self.folder_mode)
        except OSError as err:
            # Stock's warning, but once per folder per DROP_REPORT_EVERY: every line of a trigger
            # whose folder cannot be made tries again, and one team's chatty trigger must not
            # flood the supervisor's log shared by every team (its lost lines are counted).
            now = self.clock()
            if now - self._warned.get(folder, -math.inf) >= DROP_REPORT_EVERY:
                if len(self._warned) >= MADE_FOLDERS_MAX:
                    self._warned.clear()
                self._warned[folder] = now
                log.warning("Could not create log folder %s: %s. Airflow will continue but logging to this directory "
                            "may fail.", folder, err)
            return
        if len(self._made) >= MADE_FOLDERS_MAX:
            self._made.clear()
        self._made.add(folder)

    def _touch(self, path: str) -> None:
        """``Path.touch(mode, exist_ok=True)`` (3.11): the mtime of a file that exists, else create it."""
        try:
            os.utime(path, None)
            return
        except OSError:
            pass
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, self.file_mode))

    def _touch_or_warn(self, path: str) -> None:
        try:
            self._touch(path)
        except OSError as err:
            log.warning("OSError while changing ownership of the log file. %s", err)


def _mkdir(folder: str, mode: int) -> None:
    """``Path(folder).mkdir(mode, parents=True, exist_ok=True)`` (3.11) on a string: the folder's
    own ``mkdir`` first, its parents (mode 0o777, less the umask) only if that finds none; so a new
    folder under an existing one is one syscall (``os.makedirs`` asks for the parent first)."""
    try:
        os.mkdir(folder, mode)
    except FileNotFoundError:
        parent = os.path.dirname(folder)
        if parent == folder:
            raise
        _mkdir(parent, 0o777)
        try:
            os.mkdir(folder, mode)
        except OSError:
            if not os.path.isdir(folder):
                raise
    except OSError:
        if not os.path.isdir(folder):
            raise


@attrs.define(kw_only=True)
class PooledLogFactory(TriggerLoggingFactory):
    """Stock's per-trigger logger factory, writing through ``LogFiles`` instead of holding an fd."""

    pool: LogFiles = attrs.field(repr=False)

    def __call__(self, processors: Iterable[structlog.typing.Processor]) -> structlog.typing.WrappedLogger:
        if hasattr(self, "bound_logger"):
            return self.bound_logger
        self._filehandle = self.pool.file(self.log_path, self.pool.init)  # type: ignore[assignment]
        underlying = structlog.BytesLogger(self._filehandle)  # type: ignore[arg-type]
        self.bound_logger = structlog.wrap_logger(underlying, processors=trigger_log_chain.faster(processors)).bind()
        return self.bound_logger

    @classmethod
    def of(cls, stock: TriggerLoggingFactory, pool: LogFiles) -> PooledLogFactory:
        return cls(log_path=stock.log_path, ti=stock.ti, pool=pool)


def pool_factories(cache: dict[int, TriggerLoggingFactory], ids: Iterable[int], pool: LogFiles) -> None:
    """Swap the stock factories of ``ids`` (made, not yet called, by a build) for pooled ones."""
    for trigger_id in ids:
        factory = cache.get(trigger_id)
        if factory is not None and not isinstance(factory, PooledLogFactory) and not hasattr(factory, "bound_logger"):
            cache[trigger_id] = PooledLogFactory.of(factory, pool)


__all__ = ["LogFileInit", "LogFiles", "PooledLogFactory", "PooledLogFile", "default_max_open", "pool_factories"]
