"""Process, file and database plumbing shared by the benchmark scenarios.

Everything measured here comes from real processes and the real metadata DB:

* latency: ``task_instance.scheduled_dttm`` (written by ``Trigger.submit_event`` /
  ``submit_failure`` with ``timezone.utcnow()`` the moment the triggerer persists the event)
  minus the moment the trigger was due (carried in the trigger's kwargs and, for FireAtTrigger,
  echoed in the event payload; DateTimeTrigger's event payload *is* its moment);
* "a trigger is running": the first ``... starting`` line of its per-trigger log file (written
  by both triggerers, timestamped by the process that ran the trigger), or a ``start`` line in a
  FireAtTrigger record file (timestamped here, by a tail thread polling every 50 ms);
* memory: PSS (psutil's ``memory_full_info``: ``smaps_rollup``) summed over the triggerer's process tree.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mt_testsupport.home import AirflowHome, DeferSpec, decode_serde
import psutil

from mt_testsupport.procs import cpu_seconds, memory_kb, process_tree

BIN = Path(sys.executable).parent
STOCK = "stock"
MULTI = "multitrigger"
KINDS = (STOCK, MULTI)

FIRE_AT = "mt_testsupport.triggers.FireAtTrigger"
DATETIME = "airflow.providers.standard.triggers.temporal.DateTimeTrigger"
BLOCKING = "mt_testsupport.bench_triggers.BlockingTrigger"
KILL_LOOP = "mt_testsupport.crash_triggers.KillLoopTrigger"


def now() -> float:
    return time.time()


def iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat()


def to_epoch(value: Any) -> float | None:
    """A DB datetime (naive = UTC, or aware) or ISO string -> epoch seconds."""
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value.timestamp()
    raise TypeError(f"not a datetime: {value!r}")


_LOG_TS = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)(Z|[+-]\d\d:\d\d)?")


def log_line_epoch(line: str) -> float | None:
    m = _LOG_TS.match(line)
    if not m:
        return None
    return to_epoch(m.group(1) + (m.group(2) or "Z"))


# ----------------------------------------------------------------------------------- workloads
@dataclass
class Item:
    """One deferred task instance of a workload."""

    series: str  # which latency series it belongs to (e.g. "fireat", "datetime", "others")
    bundle: str
    map_index: int
    classpath: str
    kwargs: dict[str, Any]
    due: float | None  # epoch the trigger is due (None: never fires on its own)
    validate: bool = True

    @property
    def dag_id(self) -> str:
        return dag_for(self.bundle)

    def spec(self) -> DeferSpec:
        return DeferSpec(self.dag_id, "t0", self.classpath, self.kwargs, map_index=self.map_index,
                         validate=self.validate)


def dag_for(bundle: str) -> str:
    return f"dag_{bundle}"


def fire_at(series: str, bundle: str, map_index: int, due: float, record: Path | None = None) -> Item:
    kwargs: dict[str, Any] = {"moment": iso(due), "payload": {"due": iso(due), "series": series}}
    if record is not None:
        kwargs["record_path"] = str(record)
    return Item(series, bundle, map_index, FIRE_AT, kwargs, due)


def date_time(series: str, bundle: str, map_index: int, due: float) -> Item:
    # ``target_time`` (an ISO string) is DateTimeTrigger's JSON-friendly spelling of ``moment``: it is
    # parsed into the same ``moment`` on first use and the event payload is that moment.
    return Item(series, bundle, map_index, DATETIME, {"target_time": iso(due)}, due)


def spread(start: float, width: float, n: int) -> list[float]:
    return [start + (width * i / (n - 1) if n > 1 else 0.0) for i in range(n)]


# -------------------------------------------------------------------------------- the triggerer
class Triggerer:
    """``airflow triggerer`` or ``multitrigger run`` against a home; every (re)start gets its own log."""

    def __init__(self, kind: str, home: AirflowHome, workdir: Path, loops: Iterable[str] = (),
                 loop_settings: dict[str, str] | None = None) -> None:
        """``loops``: one loop per bundle (multitrigger); ``loop_settings``: extra TOML lines per loop."""
        self.kind = kind
        self.home = home
        self.workdir = workdir
        self.config: Path | None = None
        if kind == MULTI:
            self.config = workdir / "multitrigger.toml"
            extra = loop_settings or {}
            self.config.write_text("".join(f'[loops.{b}]\nbundles = ["{b}"]\n{extra.get(b, "")}\n\n' for b in loops))
        self.popen: subprocess.Popen | None = None
        self.logs: list[Path] = []
        self.launches: list[float] = []
        self.exits: list[tuple[float, int | None, bool]] = []  # (seen at, rc, we stopped it)

    @property
    def launched_at(self) -> float:
        return self.launches[0]

    def command(self) -> list[str]:
        if self.kind == STOCK:
            return [str(BIN / "airflow"), "triggerer", "--skip-serve-logs"]
        # The health server runs, as by default, but on any free port: a fixed one (8796) may be
        # taken by another supervisor on the machine, and then the server would not start at all.
        return [str(BIN / "multitrigger"), "run", "--skip-serve-logs", "--health-port", "0", "--config", str(self.config)]

    def start(self) -> None:
        n = len(self.logs)
        log = self.workdir / (f"{self.kind}.log" if n == 0 else f"{self.kind}.restart{n}.log")
        self.logs.append(log)
        with log.open("wb") as fh:
            self.launches.append(now())
            self.popen = subprocess.Popen(
                self.command(), env=self.home.env(), cwd=self.home.path, stdout=fh, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def poll(self) -> int | None:
        """None while running; the return code once it exited (recorded once)."""
        if self.popen is None:
            return None
        rc = self.popen.poll()
        if rc is not None and (not self.exits or self.exits[-1][0] < self.launches[-1]):
            self.exits.append((now(), rc, False))
        return rc

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = 45.0) -> dict[str, Any]:
        """SIGTERM, wait; past ``timeout`` SIGKILL its whole process group (ours: own session)."""
        if self.popen is None:
            return {"stopped": False}
        if self.popen.poll() is not None:
            self.poll()
            return {"stopped": False, "rc": self.popen.returncode, "already_exited": True}
        t0 = now()
        self.popen.send_signal(signal.SIGTERM)
        forced = False
        try:
            rc = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            forced = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            rc = self.popen.wait(15)
        # Loop processes die with their supervisor; make sure nothing of this group lingers.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, 0)
            time.sleep(0.5)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
        self.exits.append((now(), rc, True))
        return {"stopped": True, "rc": rc, "stop_seconds": round(now() - t0, 2), "forced_kill": forced}

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.logs if p.exists())


# ------------------------------------------------------------------------------ process memory


def pss_kb(pid: int) -> int | None:
    try:
        return memory_kb(pid)["pss"]
    except psutil.Error:
        return None


def cmdline(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return "?"


def tree_pss(root: int) -> dict[str, Any]:
    procs = []
    for pid in sorted(process_tree(root)):
        try:
            mem = memory_kb(pid)
        except psutil.Error:
            continue  # gone meanwhile
        procs.append({"pid": pid, "pss_kb": mem["pss"], "rss_kb": mem["rss"], "private_kb": mem["uss"],
                      "cmd": cmdline(pid)[:160]})
    return {"total_mb": round(sum(p["pss_kb"] for p in procs) / 1024, 1), "processes": procs}


# ------------------------------------------------------------------------------- record files
class RecordTail(threading.Thread):
    """Tails FireAtTrigger record files; every new line is stored with the wall time it was seen."""

    def __init__(self, files: Iterable[Path], interval: float = 0.05) -> None:
        super().__init__(daemon=True, name="record-tail")
        self.files = list(files)
        self.interval = interval
        self.offsets = {f: 0 for f in self.files}
        self.lines: list[tuple[float, Path, list[str]]] = []  # (seen at, file, words)
        self.lock = threading.Lock()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.poll_once()
            self._halt.wait(self.interval)
        self.poll_once()

    def poll_once(self) -> None:
        t = now()
        for f in self.files:
            try:
                size = f.stat().st_size
            except OSError:
                continue
            if size <= self.offsets[f]:
                continue
            with f.open("rb") as fh:
                fh.seek(self.offsets[f])
                data = fh.read(size - self.offsets[f])
            end = data.rfind(b"\n") + 1  # only whole lines
            self.offsets[f] += end
            with self.lock:
                for raw in data[:end].decode(errors="replace").splitlines():
                    if raw.strip():
                        self.lines.append((t, f, raw.split()))

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(5)

    def snapshot(self, word: str | None = None, file: Path | None = None) -> list[tuple[float, Path, list[str]]]:
        with self.lock:
            return [ln for ln in self.lines if (word is None or ln[2][0] == word) and (file is None or ln[1] == file)]


# ----------------------------------------------------------------------------- per-trigger logs
_MAP_INDEX = re.compile(r"dag_id=([^/]+)/run_id=[^/]+/task_id=[^/]+/map_index=(-?\d+)/")


class TriggerLogScanner(threading.Thread):
    """Finds, per task instance, the first ``... starting`` line of its per-trigger log file(s).

    The line's own timestamp (set by the process running the trigger) is the start time, so the
    scan interval does not limit precision. Stops scanning once ``expected`` keys are found.
    """

    def __init__(self, logs_dir: Path, expected: set[tuple[str, int]], interval: float = 1.0) -> None:
        super().__init__(daemon=True, name="trigger-log-scan")
        self.logs_dir = logs_dir
        self.expected = set(expected)
        self.interval = interval
        self.started: dict[tuple[str, int], float] = {}
        self.done_files: set[str] = set()
        self.lock = threading.Lock()
        self._halt = threading.Event()

    def complete(self) -> bool:
        with self.lock:
            return self.expected <= set(self.started)

    def run(self) -> None:
        while not self._halt.is_set() and not self.complete():
            self.scan_once()
            self._halt.wait(self.interval)

    def scan_once(self) -> None:
        for dirpath, dirs, files in os.walk(self.logs_dir):
            # A task instance's folder is not walked again once its start is known: with 22,200
            # running, walking every folder each second cost the benchmark ~0.2 CPUs beside the
            # triggerer it measures.
            dirs[:] = [d for d in dirs if not ((m := _MAP_INDEX.search(f"{dirpath}/{d}/")) and
                                               (m.group(1), int(m.group(2))) in self.started)]
            for name in files:
                if ".trigger." not in name:
                    continue
                path = os.path.join(dirpath, name)
                if path in self.done_files:
                    continue
                m = _MAP_INDEX.search(dirpath + "/")
                if not m:
                    continue
                key = (m.group(1), int(m.group(2)))
                try:
                    with open(path, "rb") as fh:
                        head = fh.read(65536)
                except OSError:
                    continue
                for raw in head.splitlines():
                    if b"starting" not in raw:
                        continue
                    try:
                        ts = to_epoch(json.loads(raw)["timestamp"])
                    except Exception:
                        continue
                    with self.lock:
                        if key not in self.started or ts < self.started[key]:
                            self.started[key] = ts
                    self.done_files.add(path)
                    break

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(10)


def count_trigger_log_levels(logs_dir: Path) -> dict[str, int]:
    """Over every per-trigger log file (after a run): error/warning/critical lines, how many files
    there are, and how many lack the runner's closing ``trigger completed`` line (a trigger that
    fired but whose last lines did not reach its file, or one that never finished)."""
    counts: Counter[str] = Counter()
    for dirpath, _dirs, files in os.walk(logs_dir):
        for name in files:
            if ".trigger." not in name:
                continue
            try:
                data = Path(dirpath, name).read_bytes()
            except OSError:
                continue
            counts["files"] += 1
            if b'"trigger completed"' not in data:
                counts["files_without_completed_line"] += 1
            for level in (b"error", b"warning", b"critical"):
                counts[level.decode()] += data.count(b'"level":"' + level + b'"')
    return {k: v for k, v in counts.items() if v}


# ----------------------------------------------------------------------------------- database
def db_outcomes(home: AirflowHome, items: list[Item]) -> list[dict[str, Any]]:
    """One row per workload item: state, next_method, due (from the DB), scheduled_dttm, latency."""
    rows = home.sql(
        "SELECT dag_id, map_index, state, next_method, next_kwargs, scheduled_dttm FROM task_instance "
        "WHERE task_id = 't0'"
    )
    by_key = {(r[0], int(r[1])): r for r in rows}
    out = []
    for item in items:
        r = by_key.get((item.dag_id, item.map_index))
        rec: dict[str, Any] = {"series": item.series, "bundle": item.bundle, "map_index": item.map_index,
                               "due_planned": item.due}
        if r is None:
            rec.update(state="missing")
            out.append(rec)
            continue
        _, _, state, next_method, next_kwargs, sched = r
        rec.update(state=state, next_method=next_method)
        if state == "deferred":
            out.append(rec)
            continue
        if isinstance(next_kwargs, (str, bytes)):
            next_kwargs = json.loads(next_kwargs)
        event = decode_serde((next_kwargs or {}).get("event")) if isinstance(next_kwargs, dict) else None
        due_db: float | None = None
        if isinstance(event, dict) and "due" in event:
            due_db = to_epoch(event["due"])  # FireAtTrigger: we put it in the payload
        elif isinstance(event, dt.datetime):
            due_db = event.timestamp()  # DateTimeTrigger: the payload is its moment
        rec["due_db"] = due_db
        rec["persisted_at"] = to_epoch(sched)
        due = due_db if due_db is not None else item.due
        if next_method == "__fail__":
            rec["failed"] = True
        elif due is not None and rec["persisted_at"] is not None:
            rec["latency"] = rec["persisted_at"] - due
        out.append(rec)
    return out


def count_deferred(home: AirflowHome, dag_ids: Iterable[str], map_indexes: set[int] | None = None) -> int:
    dags = sorted(set(dag_ids))
    marks = ", ".join(f":d{i}" for i in range(len(dags)))
    params = {f"d{i}": d for i, d in enumerate(dags)}
    rows = home.sql(
        f"SELECT map_index FROM task_instance WHERE state = 'deferred' AND task_id = 't0' AND dag_id IN ({marks})",
        params,
    )
    if map_indexes is None:
        return len(rows)
    return sum(1 for (mi,) in rows if mi in map_indexes)


def count_claimed(home: AirflowHome) -> int:
    return home.sql("SELECT count(*) FROM trigger WHERE triggerer_id IS NOT NULL")[0][0]


# ------------------------------------------------------------------------------------- logging
_LEVEL = re.compile(r"\[(warning|error|critical)\s*\]|\b(ERROR|WARNING|CRITICAL)\b|Traceback \(most recent")
_NOISE = re.compile(r"0x[0-9a-f]+|\d+(\.\d+)?")


def log_anomalies(text: str, limit: int = 12) -> dict[str, Any]:
    """Warning/error lines of a triggerer log, grouped by message (numbers blanked)."""
    groups: Counter[str] = Counter()
    examples: dict[str, str] = {}
    for line in text.splitlines():
        if not _LEVEL.search(line):
            continue
        body = line
        m = _LOG_TS.match(line)
        if m:
            body = line[m.end():].strip()
        key = _NOISE.sub("#", body)[:140]
        groups[key] += 1
        examples.setdefault(key, line[:400])
    top = groups.most_common(limit)
    return {"lines": sum(groups.values()), "groups": [{"count": c, "example": examples[k]} for k, c in top]}


def analyze(home: AirflowHome) -> float:
    """PostgreSQL: ``ANALYZE`` the seeded database, as a live server's autovacuum would have; the
    seconds it took. Call it before launching a triggerer (both kinds).

    This machine's server runs with ``autovacuum = off``, and a scenario seeds tens of thousands of
    rows into a new database and launches at once: every plan would be made without statistics.
    Measured (issue 13, 22,200 held): the persist step's read of 150 task instances by trigger id
    was a sequential scan of all 22,200 (14 ms, 22 ms during a burst) instead of an index scan
    (0.25 ms). A real server analyzes a table once a tenth of it changed, within a minute."""
    from sqlalchemy import text

    t0 = time.monotonic()
    with home.engine.connect() as conn:
        conn.execute(text("ANALYZE"))
        conn.commit()
    return round(time.monotonic() - t0, 2)


def grep_times(text: str, *needles: str) -> list[tuple[float, str]]:
    """(timestamp, line) of every log line containing all needles."""
    out = []
    for line in text.splitlines():
        if all(n in line for n in needles):
            ts = log_line_epoch(line)
            if ts is not None:
                out.append((ts, line))
    return out


def wait_until(pred: Callable[[], Any], deadline: float, interval: float = 0.5,
               tick: Callable[[], None] | None = None, tick_interval: float = 0.05) -> Any:
    """Poll ``pred`` every ``interval`` (and ``tick`` every ``tick_interval``) until truthy or ``deadline``."""
    next_pred = 0.0
    while True:
        t = now()
        if tick is not None:
            tick()
        if t >= next_pred:
            try:
                value = pred()
            except AssertionError:  # a failed check, not a busy DB: no point waiting it out
                raise
            except Exception:  # DB busy: try again
                value = None
            if value:
                return value
            next_pred = t + interval
        if t >= deadline:
            return None
        time.sleep(min(tick_interval if tick else interval, max(0.0, deadline - t)))


def sleep_until(epoch: float, tick: Callable[[], None] | None = None) -> None:
    while (left := epoch - now()) > 0:
        if tick is not None:
            tick()
        time.sleep(min(0.05 if tick else left, left))


# ---------------------------------------------------------------------------------- machine load
def loadavg() -> float:
    return os.getloadavg()[0]


def cpu_times() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far (psutil; idle and iowait are not busy)."""
    times = psutil.cpu_times()
    total = sum(times)
    return total - times.idle - getattr(times, "iowait", 0.0), total


class LoadProbe:
    """Machine CPU use during a window, split into the triggerer's tree, this process, and the rest.

    The rest ("foreign") is anything else running on the machine (other test runs, builds): if it is
    high, the numbers of that run were measured on a busy machine.
    """

    def __init__(self) -> None:
        self.marks: dict[str, tuple[float, float, float, float, float]] = {}

    def mark(self, name: str, root: int | None) -> None:
        busy, total = cpu_times()
        tree = cpu_seconds(process_tree(root)) if root else 0.0
        me = sum(os.times()[:2])
        self.marks[name] = (now(), busy, total, tree, me)

    def window(self, a: str, b: str) -> dict[str, Any] | None:
        if a not in self.marks or b not in self.marks:
            return None
        t0, busy0, total0, tree0, me0 = self.marks[a]
        t1, busy1, total1, tree1, me1 = self.marks[b]
        ncpu = os.cpu_count() or 1
        span = max(total1 - total0, 0.01)
        busy = (busy1 - busy0) / span * ncpu
        tree = max(0, tree1 - tree0) / span * ncpu
        me = max(0, me1 - me0) / span * ncpu
        return {"seconds": round(t1 - t0, 1), "machine_busy_cpus": round(busy, 2), "triggerer_cpus": round(tree, 2),
                "benchmark_cpus": round(me, 2), "foreign_cpus": round(max(0.0, busy - tree - me), 2),
                "cpus": ncpu, "loadavg_end": loadavg()}


def busy_cpus(sample: float = 2.0) -> float:
    """CPUs' worth of work the machine did over ``sample`` seconds, excluding this process."""
    b0, t0 = cpu_times()
    me0 = sum(os.times()[:2])
    time.sleep(sample)
    b1, t1 = cpu_times()
    me1 = sum(os.times()[:2])
    ncpu = os.cpu_count() or 1
    return max(0.0, (b1 - b0) / max(t1 - t0, 0.01) * ncpu - (me1 - me0) / sample)


def wait_quiet(max_wait: float, threshold: float = 0.5, say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Wait (at most ``max_wait`` s) until the machine is nearly idle; return what was seen."""
    t0 = now()
    seen = busy_cpus()
    while seen > threshold and now() - t0 < max_wait:
        if say:
            say(f"machine busy ({seen:.2f} CPUs used by other processes); waiting for quiet")
        seen = busy_cpus(5.0)
    return {"waited_s": round(now() - t0, 1), "busy_cpus_before_start": round(seen, 2), "quiet": seen <= threshold}
