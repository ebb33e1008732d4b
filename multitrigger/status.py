"""
``multitrigger status``: a running supervisor's loops at a glance, from its health server.

Finds the server through ``--url``, else the address file the supervisor writes
(``$AIRFLOW_HOME/multitrigger/health.json``), else the config's ``[health]`` host and port. Reads
``/loops`` (one JSON document) and prints one row per loop with ``rich``, problems in red, then
what keeps the supervisor from being ready and the triggers that blocked their loops most.

Exit code: 0 healthy (live, ready, DB reachable), 1 not healthy, 2 no supervisor answered; so it
serves as a probe. ``--json`` prints the document itself; ``--watch`` redraws it.
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.error
import urllib.request
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from multitrigger.paths import state_dir

TIMEOUT = 5.0
HEALTHY, UNHEALTHY, UNREACHABLE = 0, 1, 2


def find_url(args: argparse.Namespace) -> str:
    if args.url:
        return args.url.rstrip("/")
    address = state_dir() / "health.json"
    try:
        return json.loads(address.read_text())["url"]
    except (OSError, ValueError, KeyError):
        pass
    from multitrigger.cli import _load

    health = _load(args).health
    return f"http://{health.host}:{health.port}"


def fetch(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/loops", timeout=TIMEOUT) as resp:  # noqa: S310 (our own server)
        return json.loads(resp.read())


def healthy(doc: dict[str, Any]) -> bool:
    return bool(doc.get("live") and doc.get("ready") and doc.get("db") == "ok")


def _num(value: float | None, fmt: str = "{:.0f}", unit: str = "") -> str:
    return "-" if value is None else fmt.format(value) + unit


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 1048576:.0f} MiB"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def _loop_problem(loop: dict[str, Any]) -> bool:
    return ((loop["wanted"] and loop["state"] != "running") or loop["restarts_recent"] > 0 or bool(loop["quarantined"])
            or bool(loop.get("blocking_now")))


def render(doc: dict[str, Any], url: str) -> Group:
    ok = healthy(doc)
    head = Text(f"multitrigger at {url}: ", style="bold")
    head.append("healthy" if ok else "NOT HEALTHY", style="bold green" if ok else "bold red")
    head.append(f"  (pid {doc.get('pid')}, job {doc.get('job_id')}, {doc.get('triggers', 0)} triggers, "
                f"DB {doc.get('db')}, snapshot {doc.get('snapshot_age')} s old)")
    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("loop", "bundles", "state", "pid", "python/airflow", "triggers", "events", "failures",
                "restarts (10m)", "last exit", "check-in", "lag p50/p99 ms", "blocked", "memory", "cpu s"):
        table.add_column(col, justify="right" if col in {"pid", "triggers", "events", "failures", "blocked", "cpu s"} else "left")
    for loop in doc.get("loops", []):
        bad = _loop_problem(loop)
        state = Text(loop["state"] + (f", {len(loop['quarantined'])} quarantined" if loop["quarantined"] else ""),
                     style="red" if bad else "green" if loop["state"] == "running" else "")
        versions = f"{loop['python_version'] or '?'}/{loop['airflow_version'] or '?'}"
        table.add_row(
            Text(loop["name"], style="bold red" if bad else "bold"), loop["bundle_label"], state,
            _num(loop["pid"]), versions, str(loop["triggers"]), str(loop["events"]), str(loop["failures"]),
            Text(f"{loop['restarts']} ({loop['restarts_recent']})", style="red" if loop["restarts_recent"] else ""),
            Text(loop["last_exit"] or "-", style="red" if loop["last_exit"] else ""),
            _num(loop["since_checkin"], "{:.1f}", " s"), f"{_ms(loop['lag_p50'])}/{_ms(loop['lag_p99'])}",
            Text(str(loop["blocked_episodes"]), style="yellow" if loop["blocked_episodes"] else ""),
            _mib(loop.get("memory_pss_bytes")), _num(loop.get("cpu_seconds"), "{:.1f}"),
        )
    parts: list[Any] = [head, table]
    for problem in doc.get("not_ready", []):
        parts.append(Text(f"not ready: {problem}", style="red"))
    for loop in doc.get("loops", []):
        if lost := loop.get("limits_not_applied"):
            parts.append(Text(f"loop {loop['name']} runs WITHOUT its limits (best_effort): {'; '.join(lost)}",
                              style="bold yellow"))
        if b := loop.get("blocking_now"):
            task = "/".join(str(x) for x in (b["dag_id"], b["task_id"], b["run_id"]) if x) or "-"
            parts.append(Text(f"loop {loop['name']} silent for {b['silent_s']} s, running trigger {b['trigger_id']} "
                              f"({b['classpath']}, {task})", style="bold red"))
    blockers = [(loop["name"], b) for loop in doc.get("loops", []) for b in loop["worst_blockers"]]
    if blockers:
        worst = Table(title="triggers that blocked their event loop (worst first)", title_justify="left",
                      box=None, pad_edge=False, header_style="bold")
        for col in ("loop", "trigger", "classpath", "dag/task/run", "episodes", "blocked s", "max s"):
            worst.add_column(col)
        for name, b in sorted(blockers, key=lambda nb: -nb[1]["seconds_total"])[:10]:
            task = "/".join(str(x) for x in (b["dag_id"], b["task_id"], b["run_id"]) if x) or "-"
            worst.add_row(name, str(b["trigger_id"]), b["classpath"], task, str(b["episodes"]),
                          f"{b['seconds_total']:.2f}", f"{b['seconds_max']:.2f}")
        parts.append(worst)
    return Group(*parts)


def run_status(args: argparse.Namespace, console: Console | None = None) -> int:
    console = console or Console()
    url = find_url(args)
    while True:
        try:
            doc = fetch(url)
        except (urllib.error.URLError, OSError, ValueError) as err:
            if args.json:
                print(json.dumps({"error": f"no supervisor answered at {url}: {err}"}))
            else:
                console.print(Text(f"no supervisor answered at {url}: {err}", style="bold red"))
            code = UNREACHABLE
        else:
            code = HEALTHY if healthy(doc) else UNHEALTHY
            if args.json:
                print(json.dumps(doc, indent=2, default=str))
            else:
                if args.watch:
                    console.clear()
                console.print(render(doc, url))
        if not args.watch:
            return code
        try:
            time.sleep(args.watch)
        except KeyboardInterrupt:
            return code
