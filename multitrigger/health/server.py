"""
The supervisor's HTTP health server: its own thread, reading only the published snapshot.

``http.server.ThreadingHTTPServer`` (standard library) on its own daemon thread: a slow or
stuck client, or a costly scrape, never delays the selector, and a wedged selector does not
stop the server from saying so (``/health/live`` turns 503 when the snapshot grows old).

==================  ===========================================================================
``/health/live``    200 while the main loop publishes (snapshot younger than ``live_threshold``)
``/health/ready``   200 when live, claiming, and every wanted loop is up; else 503 and the list
``/loops``          JSON: the supervisor and one object per loop (with memory, CPU, cgroup)
``/metrics``        Prometheus text (``multitrigger.health.collector``)
==================  ===========================================================================

The bound address is written to ``<state dir>/health.json`` (``multitrigger status`` reads it) and
removed at shutdown. A port that cannot be bound is logged and the supervisor runs on without it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from multitrigger.config import HealthSettings
from multitrigger.health.collector import registry_for
from multitrigger.health.procstats import ProcCache
from multitrigger.health.snapshot import Board

log = structlog.get_logger(__name__)

ADDRESS_FILE = "health.json"


def loops_document(board: Board, procs: ProcCache, live_threshold: float) -> dict[str, Any]:
    """The ``/loops`` body: the snapshot, liveness, and each loop's process figures."""
    snap, age = board.latest, board.age()
    if snap is None:
        return {"live": False, "ready": False, "snapshot_age": None, "not_ready": ["starting up"], "loops": []}
    body = snap.as_dict() | {"live": age <= live_threshold, "snapshot_age": round(age, 3)}
    own = procs.get(snap.pid)
    body |= {"memory_rss_bytes": own.rss_bytes, "cpu_seconds": own.cpu_seconds}
    for loop, snap_loop in zip(body["loops"], snap.loops):
        proc = procs.get(loop["pid"])
        loop |= {"memory_pss_bytes": proc.pss_bytes, "memory_rss_bytes": proc.rss_bytes,
                 "cpu_seconds": proc.cpu_seconds, "cgroup": loop["cgroup_path"] or proc.cgroup,
                 "cgroup_usage": procs.usage(snap_loop.cgroup) or None}
    return body


class _Handler(BaseHTTPRequestHandler):
    server: HealthServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        route = {"/health/live": self._live, "/health/ready": self._ready, "/loops": self._loops,
                 "/metrics": self._metrics, "/": self._index}.get(path)
        if route is None:
            self._send(404, {"error": f"no such endpoint {path}", "endpoints": ENDPOINTS})
            return
        try:
            route()
        except Exception as err:  # a bug here must not kill the server thread
            log.exception("health endpoint failed", path=path)
            self._send(500, {"error": repr(err)})

    def _live(self) -> None:
        age = self.server.board.age()
        live = age <= self.server.settings.live_threshold
        self._send(200 if live else 503, {"live": live, "snapshot_age": None if age == float("inf") else round(age, 3),
                                          "threshold": self.server.settings.live_threshold})

    def _ready(self) -> None:
        snap, age = self.server.board.latest, self.server.board.age()
        problems = ["starting up"] if snap is None else list(snap.not_ready)
        if age > self.server.settings.live_threshold:
            problems.insert(0, f"main loop has not published for {age:.1f}s")
        self._send(200 if not problems else 503, {"ready": not problems, "not_ready": problems})

    def _loops(self) -> None:
        self._send(200, loops_document(self.server.board, self.server.procs, self.server.settings.live_threshold))

    def _metrics(self) -> None:
        wall, cpu = time.perf_counter(), time.thread_time()
        body = generate_latest(self.server.registry)
        self._render = (time.perf_counter() - wall, time.thread_time() - cpu)
        self._send_bytes(200, body, CONTENT_TYPE_LATEST)

    def _index(self) -> None:
        self._send(200, {"endpoints": ENDPOINTS})

    def _send(self, code: int, body: dict[str, Any]) -> None:
        self._send_bytes(code, json.dumps(body, default=str).encode(), "application/json")

    def _send_bytes(self, code: int, data: bytes, content_type: str) -> None:
        self.send_response(code)
        if render := getattr(self, "_render", None):  # what rendering /metrics cost, for benchmarks.health
            self.send_header("X-Render-Seconds", f"wall={render[0]:.6f} cpu={render[1]:.6f}")
            self._render = None
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        pass  # a scrape a second is not worth a log line each


ENDPOINTS = ["/health/live", "/health/ready", "/loops", "/metrics"]


class HealthServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, settings: HealthSettings, board: Board) -> None:
        super().__init__((settings.host, settings.port), _Handler)
        self.settings, self.board = settings, board
        self.procs = ProcCache()
        self.registry = registry_for(board, self.procs)
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.5},
                                       name="health-http", daemon=True)
        self.address_file: Path | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    @classmethod
    def start(cls, settings: HealthSettings, board: Board, state_dir: Path) -> HealthServer | None:
        """Bind and serve on a thread; None (logged) when disabled or the address cannot be bound."""
        if not settings.enabled:
            log.info("health server disabled")
            return None
        try:
            server = cls(settings, board)
        except OSError as err:
            log.error("health server not started: cannot bind", host=settings.host, port=settings.port, error=str(err),
                      fix="set [health] port (or --health-port) to a free port, or [health] enabled = false")
            return None
        server.thread.start()
        server.address_file = state_dir / ADDRESS_FILE
        tmp = server.address_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"url": server.url, "pid": os.getpid()}))
        tmp.replace(server.address_file)
        log.info("health server listening", url=server.url)
        return server

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self.address_file is not None:
            try:
                if json.loads(self.address_file.read_text()).get("pid") == os.getpid():
                    self.address_file.unlink()
            except (OSError, ValueError):
                pass
