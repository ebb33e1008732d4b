"""
``LogFiles``: at most ``max_open`` trigger log files open, every line still in its file, stock's
truncate-at-first-open kept, and a line that cannot be written dropped and counted, not raised.
Real files; the EMFILE case runs in a child process with a real, low ``RLIMIT_NOFILE``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import structlog

from multitrigger.supervisor.log_files import LogFiles, PooledLogFactory, default_max_open


def _absolute(path: str) -> str:
    return path


def test_lines_reach_their_files_with_at_most_max_open_held(tmp_path: Path) -> None:
    pool = LogFiles(max_open=3)
    (tmp_path / "t0.log").write_bytes(b"left from an earlier run\n")
    files = [pool.file(str(tmp_path / f"t{i}.log"), _absolute) for i in range(10)]
    for round_ in range(3):
        for i, f in enumerate(files):
            f.write(f"trigger {i} line {round_}\n".encode())
            assert pool.open_count <= 3
    for i in range(10):  # truncated at its first write (as stock's "wb"), appended to after each reopen
        assert (tmp_path / f"t{i}.log").read_text() == "".join(f"trigger {i} line {r}\n" for r in range(3))
    files[0].close()
    files[0].write(b"after close\n")  # a finished trigger's late line is not reopened into its file
    assert "after close" not in (tmp_path / "t0.log").read_text()
    pool.close_all()
    assert pool.open_count == 0 and pool.dropped == 0


def test_a_file_is_opened_as_open_would_open_it(tmp_path: Path) -> None:
    """Raw fds, as ``open(path, "wb")`` / ``"ab"`` make them: umask-applied 0o666 when created,
    close-on-exec (a loop or a hook started later does not inherit trigger log files)."""
    import os

    pool = LogFiles(max_open=1)
    first, second = pool.file(str(tmp_path / "a.log"), _absolute), pool.file(str(tmp_path / "b.log"), _absolute)
    first.write(b"one\n")
    assert first.fileno() > 2 and not os.get_inheritable(first.fileno())
    assert oct((tmp_path / "a.log").stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    second.write(b"x\n")  # closes first
    assert first.fileno() == -1
    first.write(b"two\n")
    assert (tmp_path / "a.log").read_bytes() == b"one\ntwo\n" and not os.get_inheritable(first.fileno())
    pool.close_all()


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_an_unwritable_file_drops_its_lines_and_counts_them(tmp_path: Path) -> None:
    pool = LogFiles(max_open=4)
    (tmp_path / "a_directory").mkdir()
    bad = pool.file(str(tmp_path / "a_directory"), _absolute)  # open() raises IsADirectoryError
    good = pool.file(str(tmp_path / "good.log"), _absolute)
    bad.write(b"lost\n")
    bad.write(b"lost too\n")
    good.write(b"kept\n")
    assert pool.dropped == 2
    assert (tmp_path / "good.log").read_text() == "kept\n"


def test_the_stock_factory_logs_through_the_pool(tmp_path: Path, monkeypatch) -> None:
    """Stock's consumer calls ``factory(processors)``; the file is made under ``base_log_folder``
    by Airflow's ``init_log_file`` and remote upload finds it by ``_file.name``."""
    from airflow.sdk.log import relative_path_from_logger

    monkeypatch.setenv("AIRFLOW__LOGGING__BASE_LOG_FOLDER", str(tmp_path))
    pool = LogFiles(max_open=1)
    factories = [PooledLogFactory(log_path=f"dag_id=d/run_id=r/task_id=t{i}/attempt=1.log.trigger.7.log", ti=None, pool=pool)
                 for i in range(3)]
    processors = [structlog.processors.JSONRenderer(serializer=lambda obj, **kw: json.dumps(obj).encode())]
    for _ in range(2):
        for i, factory in enumerate(factories):
            factory(processors).info(f"hello {i}")
    for i, factory in enumerate(factories):
        path = tmp_path / factory.log_path
        assert path.read_text().count(f'"hello {i}"') == 2
        assert relative_path_from_logger(factory.bound_logger._logger) == Path(factory.log_path)
        factory.close()
    assert pool.open_count == 0


def test_default_max_open_leaves_room_for_everything_else() -> None:
    assert default_max_open(256) == 64
    assert default_max_open(40) == 16
    assert default_max_open(1 << 20) == 4096


EMFILE_CHILD = textwrap.dedent("""
    import os, resource, sys
    from multitrigger.supervisor.log_files import LogFiles
    root = sys.argv[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    pool = LogFiles(max_open=1000)  # more than the fd limit: EMFILE decides
    files = [pool.file(os.path.join(root, f"t{i}.log"), lambda p: p) for i in range(200)]
    for i, f in enumerate(files):
        f.write(b"line\\n")
    print("open", pool.open_count, "dropped", pool.dropped)
    for i in range(200):
        assert open(os.path.join(root, f"t{i}.log"), "rb").read() == b"line\\n", i
    print("ok")
""")


def test_emfile_closes_our_oldest_files_and_retries(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", EMFILE_CHILD, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    opened, dropped = done.stdout.split()[1], done.stdout.split()[3]
    assert int(opened) < 64 and dropped == "0" and done.stdout.strip().endswith("ok")


def test_a_file_deleted_from_outside_is_made_again_with_airflows_permissions(tmp_path: Path, monkeypatch) -> None:
    """A log file removed while its trigger runs (logrotate, an operator) comes back at the next
    reopen through ``init_log_file``: its folders too (a plain reopen would fail and drop every later
    line), and ``file_task_handler_new_file_permissions`` (a plain ``open`` gives 0o666 less the
    umask); reopens are counted (``multitrigger_log_file_reopens_total``)."""
    import os
    import stat

    monkeypatch.setenv("AIRFLOW__LOGGING__BASE_LOG_FOLDER", str(tmp_path))
    monkeypatch.setenv("AIRFLOW__LOGGING__FILE_TASK_HANDLER_NEW_FILE_PERMISSIONS", "0o640")
    old_umask = os.umask(0o022)
    try:
        pool = LogFiles(max_open=1)
        factories = [PooledLogFactory(log_path=f"dag_id=d/run_id=r/task_id=t{i}/attempt=1.log.trigger.{i}.log",
                                      ti=None, pool=pool) for i in range(2)]
        processors = [structlog.processors.JSONRenderer(serializer=lambda obj, **kw: json.dumps(obj).encode())]
        loggers = [f(processors) for f in factories]
        loggers[0].info("first")
        path = tmp_path / factories[0].log_path
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
        loggers[1].info("makes room: t0 is closed")
        path.unlink()
        path.parent.rmdir()
        loggers[0].info("after the delete")  # reopened: made again by init_log_file
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, oct(path.stat().st_mode)
        assert [json.loads(line)["event"] for line in path.read_text().splitlines()] == ["after the delete"]
        loggers[1].info("again")
        assert pool.dropped == 0 and pool.reopens == 2  # t0 once, t1 once; first opens are not reopens
    finally:
        os.umask(old_umask)


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root``: its mode and size."""
    import stat

    return {str(p.relative_to(root)): (stat.S_IMODE(p.stat().st_mode), p.stat().st_size) for p in sorted(root.rglob("*"))}


def _side(base: Path, monkeypatch, plain: bytes, mode: int):  # type: ignore[no-untyped-def]
    """One side of a stock-against-ours comparison: ``base`` as the log folder, holding an old
    ``plain.log`` (``plain``, ``mode``, mtime 0), and a ``LogFileInit`` read from that config."""
    import os

    from multitrigger.supervisor.log_files import LogFileInit

    base.mkdir()
    monkeypatch.setenv("AIRFLOW__LOGGING__BASE_LOG_FOLDER", str(base))
    (base / "plain.log").write_bytes(plain)
    os.chmod(base / "plain.log", mode)
    os.utime(base / "plain.log", (0, 0))
    return base, LogFileInit.from_config()


def test_log_file_init_makes_what_stock_init_log_file_makes(tmp_path: Path, monkeypatch) -> None:
    """``LogFileInit`` (config read once, folders remembered) against Airflow's ``init_log_file`` on
    the same relative paths, in two trees: the same returned path, the same folders and files with
    the same modes (the umask applies to both), an existing file's content kept and its mtime
    touched; a remembered folder removed from outside is made again."""
    import os
    import shutil
    import stat
    import time

    from airflow.sdk.log import init_log_file

    monkeypatch.setenv("AIRFLOW__LOGGING__FILE_TASK_HANDLER_NEW_FOLDER_PERMISSIONS", "0o750")
    monkeypatch.setenv("AIRFLOW__LOGGING__FILE_TASK_HANDLER_NEW_FILE_PERMISSIONS", "0o640")
    relatives = ["dag_id=d/run_id=r/task_id=t/attempt=1.log.trigger.1.log",
                 "dag_id=d/run_id=r/task_id=t/map_index=3/attempt=1.log.trigger.2.log",
                 "dag_id=d//run_id=r2/./task_id=t/attempt=2.log.trigger.3.log", "plain.log"]

    old_umask = os.umask(0o022)
    try:
        made = {}
        for side in ("stock", "ours"):
            base, init = _side(tmp_path / side, monkeypatch, b"kept\n", 0o644)
            paths = [str(init_log_file(r)) if side == "stock" else init(r) for r in relatives]
            assert paths == [str(Path(base, r)) for r in relatives]
            assert (base / "plain.log").stat().st_mtime > time.time() - 60  # touched
            made[side] = _tree(base)
        assert made["ours"] == made["stock"], made
        assert made["stock"]["dag_id=d/run_id=r/task_id=t"][0] == 0o750
        assert made["stock"]["dag_id=d/run_id=r/task_id=t/attempt=1.log.trigger.1.log"] == (0o640, 0)
        assert made["stock"]["plain.log"] == (0o644, 5)  # an existing file keeps its mode and content

        folder = tmp_path / "ours" / "dag_id=d/run_id=r/task_id=t"
        shutil.rmtree(folder)
        assert init(relatives[0]) == str(folder / "attempt=1.log.trigger.1.log")
        assert stat.S_IMODE(folder.stat().st_mode) == 0o750 and (folder / "attempt=1.log.trigger.1.log").exists()
    finally:
        os.umask(old_umask)


def test_log_file_create_makes_what_stock_init_and_first_open_make(tmp_path: Path, monkeypatch) -> None:
    """``LogFileInit.create`` (folder, then one truncating open) against what stock does at a
    trigger's first line (``init_log_file``, then ``open(path, "wb")``) on the same relative paths:
    the same paths, folders and files with the same modes (umask applied), an existing file emptied
    with its mode kept and its mtime updated; missing parents and a folder removed since are made."""
    import os
    import shutil
    import stat
    import time

    from airflow.sdk.log import init_log_file

    from multitrigger.supervisor.log_files import LogFileInit

    monkeypatch.setenv("AIRFLOW__LOGGING__FILE_TASK_HANDLER_NEW_FOLDER_PERMISSIONS", "0o750")
    monkeypatch.setenv("AIRFLOW__LOGGING__FILE_TASK_HANDLER_NEW_FILE_PERMISSIONS", "0o640")
    relatives = ["dag_id=d/run_id=r/task_id=t/attempt=1.log.trigger.1.log",
                 "dag_id=d/run_id=r/task_id=t/map_index=3/attempt=1.log.trigger.2.log",
                 "dag_id=d/run_id=r/task_id=t/map_index=4/attempt=1.log.trigger.2.log",
                 "dag_id=d//run_id=r2/./task_id=t/attempt=2.log.trigger.3.log", "plain.log"]

    old_umask = os.umask(0o022)  # defaults (0o755 folders, 0o644 files) unlike the configured modes
    try:
        made = {}
        for side in ("stock", "ours"):
            base, init = _side(tmp_path / side, monkeypatch, b"old lines\n", 0o600)
            for r in relatives:
                if side == "stock":
                    path = str(init_log_file(r))
                    open(path, "wb").close()
                else:
                    path, fd = init.create(r)
                    os.close(fd)
                assert path == str(Path(base, r))
            assert (base / "plain.log").stat().st_mtime > time.time() - 60
            made[side] = _tree(base)
        assert made["ours"] == made["stock"], made
        assert made["stock"]["dag_id=d/run_id=r/task_id=t/map_index=3"][0] == 0o750
        assert made["stock"]["dag_id=d/run_id=r"][0] == 0o755  # parents: 0o777 less the umask
        assert made["stock"]["dag_id=d/run_id=r/task_id=t/attempt=1.log.trigger.1.log"] == (0o640, 0)
        assert made["stock"]["plain.log"] == (0o600, 0)  # emptied, its mode kept

        folder = tmp_path / "ours" / "dag_id=d/run_id=r/task_id=t/map_index=3"
        shutil.rmtree(folder)
        path, fd = init.create(relatives[1])  # remembered as made, removed since: made again
        os.close(fd)
        assert stat.S_IMODE(folder.stat().st_mode) == 0o750 and Path(path).stat().st_size == 0

        stock_side = LogFileInit("relative/base", 0o750, 0o640)  # not a plain absolute base: stock's code
        monkeypatch.setenv("AIRFLOW__LOGGING__BASE_LOG_FOLDER", str(tmp_path / "stock2"))
        path, fd = stock_side.create("dag_id=d/attempt=1.log")
        os.close(fd)
        assert path == str(tmp_path / "stock2/dag_id=d/attempt=1.log") and os.path.exists(path)
    finally:
        os.umask(old_umask)


def test_a_first_line_that_cannot_make_its_file_is_dropped_and_counted(tmp_path: Path, monkeypatch) -> None:
    """A file where the trigger's folder should be: the line is dropped and counted, nothing
    raises into the consumer, and the file's name is still the absolute path (the drop warning's,
    ``upload_to_remote``'s)."""
    from multitrigger.supervisor.log_files import LogFiles

    monkeypatch.setenv("AIRFLOW__LOGGING__BASE_LOG_FOLDER", str(tmp_path))
    (tmp_path / "dag_id=d").write_text("not a folder")
    pool = LogFiles(8)
    bad = pool.file("dag_id=d/map_index=1/attempt=1.log", pool.init)
    good = pool.file("dag_id=e/attempt=1.log", pool.init)
    pool.write(bad, b"lost\n")
    pool.write(good, b"kept\n")
    assert pool.dropped == 1 and bad.name == str(tmp_path / "dag_id=d/map_index=1/attempt=1.log")
    assert (tmp_path / "dag_id=e/attempt=1.log").read_bytes() == b"kept\n"


def test_a_folder_that_cannot_be_made_is_warned_about_once_per_interval(tmp_path: Path) -> None:
    """Every line of a trigger whose folder cannot be made tries again; stock's warning is logged
    once per folder per ``DROP_REPORT_EVERY``, not once per line (the supervisor's log is shared)."""
    import structlog

    from multitrigger.supervisor.log_files import DROP_REPORT_EVERY, LogFileInit

    (tmp_path / "dag_id=d").write_text("not a folder")
    now = [100.0]
    init = LogFileInit(str(tmp_path), 0o755, 0o644, clock=lambda: now[0])
    with structlog.testing.capture_logs() as logs:
        for _ in range(50):
            with pytest.raises(NotADirectoryError):
                init.create("dag_id=d/map_index=1/attempt=1.log")
        now[0] += DROP_REPORT_EVERY
        with pytest.raises(NotADirectoryError):
            init.create("dag_id=d/map_index=1/attempt=1.log")
    warned = [e for e in logs if e["event"].startswith("Could not create log folder")]
    assert len(warned) == 2, logs
