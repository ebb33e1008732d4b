"""
What the health server costs: supervisor CPU with health on and scraped every second, against
health off, with N running triggers; and how fast a scrape answers.

One real Airflow home (SQLite), 4 bundles with N/4 never-firing triggers each (real deferred task
instances), one loop per bundle. The same home is run once with ``--no-health`` and once with the
health server on (``--health-port 0``). Once every trigger is running (all N claimed by the job;
then a settle period), the supervisor process's own CPU time (user + system, psutil; its loops
and zygotes are other processes, not counted) is measured over windows: off, off, ...; and with
health on, alternately a quiet window and one where this process scrapes ``/metrics`` every
second (and ``/loops`` every fifth second). Quiet and scraped windows of one process compare like
with like (same DB, same triggers), so the scrape cost is not lost in run-to-run noise; off vs
quiet is the idle server's cost. Each scrape's wall time is from request to last byte. Last, the
floor: a bare standard-library HTTP server process answering a constant body of the same size,
scraped the same way, so the cost of serving at all is known apart from the cost of our metrics.

    .venv/bin/python -m benchmarks.health                 # 2000 triggers, 4 windows of 30 s per mode
    .venv/bin/python -m benchmarks.health --triggers 200 --window 10 --rounds 1   # quick look
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from mt_testsupport.home import WAIT_FOREVER, AirflowHome, DeferSpec, deferring_bundle

MULTITRIGGER = str(Path(sys.executable).parent / "multitrigger")
BUNDLES = ("b0", "b1", "b2", "b3")


def build_home(root: Path, triggers: int) -> AirflowHome:
    home = AirflowHome.create(root / "home", {b: deferring_bundle(f"dag_{b}") for b in BUNDLES},
                              extra_config={"triggerer": {"capacity": str(triggers + 1000),
                                                          "max_trigger_to_select_per_loop": str(triggers + 1000)}})
    specs = [DeferSpec(f"dag_{BUNDLES[i % 4]}", "t0", WAIT_FOREVER, {"marker_path": str(root / "markers" / str(i))},
                     map_index=i) for i in range(triggers)]
    home.defer_many(specs)
    config = "".join(f'[loops.{b}]\nbundles = ["{b}"]\n' for b in BUNDLES)
    (home.path / "multitrigger.toml").write_text(textwrap.dedent(config))
    return home


def _get(url: str, renders: list[tuple[float, float]] | None = None) -> tuple[float, int]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=10) as resp:
        size = len(resp.read())
        if renders is not None and (header := resp.headers.get("X-Render-Seconds")):
            wall, cpu = (float(part.split("=")[1]) for part in header.split())
            renders.append((wall, cpu))
    return time.perf_counter() - t0, size


def _window(proc: psutil.Process, url: str | None, seconds: float) -> dict[str, Any]:
    """The supervisor's CPU over ``seconds``, scraping ``url`` every second (if given)."""
    scrapes: list[float] = []
    loops_scrapes: list[float] = []
    sizes: list[int] = []
    renders: list[tuple[float, float]] = []  # the server's own time rendering /metrics: wall, thread CPU
    stop = threading.Event()
    t_start = time.monotonic()

    def scrape() -> None:
        n = 0
        while not stop.wait(max(0.0, 1.0 - (time.monotonic() - t_start) % 1.0)):
            took, size = _get(url + "/metrics", renders)
            scrapes.append(took)
            sizes.append(size)
            if n % 5 == 0:
                loops_scrapes.append(_get(url + "/loops")[0])
            n += 1

    c0 = proc.cpu_times()
    t_start = time.monotonic()
    scraper = threading.Thread(target=scrape, daemon=True) if url else None
    if scraper:
        scraper.start()
    time.sleep(seconds)
    c1 = proc.cpu_times()
    elapsed = time.monotonic() - t_start
    stop.set()
    if scraper:
        scraper.join(15)
    cpu = (c1.user + c1.system) - (c0.user + c0.system)
    return {"window_s": round(elapsed, 2), "cpu_s": round(cpu, 3), "cpu_pct": round(100 * cpu / elapsed, 2),
            "scrapes": len(scrapes), "metrics_bytes": sizes[-1] if sizes else None,
            "metrics_ms": _stats(scrapes), "loops_ms": _stats(loops_scrapes), "metrics_s": scrapes,
            "render_wall_ms": _stats([w for w, _ in renders]), "render_cpu_ms": _stats([c for _, c in renders]),
            "render_s": renders}


def one_run(home: AirflowHome, triggers: int, health: bool, settle: float, window: float, rounds: int) -> dict[str, Any]:
    args = ["--health-port", "0"] if health else ["--no-health"]
    log = home.path / f"mt-{'on' if health else 'off'}-{time.time():.0f}.log"
    address = home.path / "multitrigger" / "health.json"
    address.unlink(missing_ok=True)
    with log.open("wb") as fh:
        popen = subprocess.Popen([MULTITRIGGER, "run", "--skip-serve-logs", "--config", str(home.path / "multitrigger.toml"), *args],
                                 env=home.env(), stdout=fh, stderr=subprocess.STDOUT, cwd=home.path)
    try:
        t_launch = time.monotonic()
        home.wait_for(lambda: home.sql("SELECT count(*) FROM trigger t JOIN job j ON t.triggerer_id = j.id "
                                       "WHERE j.end_date IS NULL")[0][0] == triggers, timeout=300, interval=1.0)
        t_claimed = time.monotonic() - t_launch
        time.sleep(settle)  # every loop has created its triggers
        url = json.loads(address.read_text())["url"] if health else None
        if url:
            loops = json.loads(urllib.request.urlopen(url + "/loops", timeout=10).read())
            running = sum(lp["triggers"] for lp in loops["loops"])
            assert running == triggers, running
        proc = psutil.Process(popen.pid)
        windows = []
        for _ in range(rounds):
            for scraped in ((False, True) if url else (False,)):
                windows.append(_window(proc, url if scraped else None, window) | {"scraped": scraped})
        return {"health": health, "claimed_s": round(t_claimed, 1), "windows": windows}
    finally:
        popen.terminate()
        try:
            popen.wait(60)
        except subprocess.TimeoutExpired:
            popen.kill()


#: The floor: a bare standard-library HTTP server (the same class as the health server) answering
#: a constant body of /metrics' size. What one scrape a second costs before any metric is rendered.
_FLOOR_SERVER = r"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
BODY = b"x" * int(sys.argv[1])
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", str(len(BODY))); self.end_headers()
        self.wfile.write(BODY)
    def log_message(self, *args):
        pass
server = ThreadingHTTPServer(("127.0.0.1", 0), H)
server.daemon_threads = True
print(server.server_address[1], flush=True)
server.serve_forever(poll_interval=0.5)
"""


def floor_run(body_bytes: int, window: float, rounds: int) -> dict[str, Any]:
    """CPU of a bare HTTP server process, quiet vs scraped like the supervisor (``_window``)."""
    popen = subprocess.Popen([sys.executable, "-c", _FLOOR_SERVER, str(body_bytes)], stdout=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{int(popen.stdout.readline())}"
        proc = psutil.Process(popen.pid)
        windows = [_window(proc, url if scraped else None, window) | {"scraped": scraped}
                   for _ in range(rounds) for scraped in (False, True)]
    finally:
        popen.kill()
        popen.wait()
    return {"body_bytes": body_bytes, "windows": windows}


def _stats(seconds: list[float]) -> dict[str, float] | None:
    if not seconds:
        return None
    ordered = sorted(seconds)
    return {"median": round(statistics.median(ordered) * 1000, 2),
            "p99": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000, 2),
            "max": round(ordered[-1] * 1000, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--triggers", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=4, help="windows per run (health on: that many quiet/scraped pairs)")
    parser.add_argument("--window", type=float, default=30.0, help="measured seconds per window")
    parser.add_argument("--settle", type=float, default=15.0, help="seconds after all are claimed before measuring")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mt-health-bench-") as tmp:
        home = build_home(Path(tmp), args.triggers)
        runs = [one_run(home, args.triggers, health, args.settle, args.window, args.rounds) for health in (False, True)]
    body = next(w["metrics_bytes"] for w in runs[1]["windows"] if w["metrics_bytes"])
    floor = floor_run(body, args.window, args.rounds)
    floor_pct = {s: statistics.median(w["cpu_pct"] for w in floor["windows"] if w["scraped"] == s) for s in (False, True)}
    for run in runs:
        for w in run["windows"]:
            print(json.dumps({"health": run["health"]} | {k: v for k, v in w.items() if k not in ("metrics_s", "render_s")}))
    pct = {key: [w["cpu_pct"] for r in runs for w in r["windows"] if (r["health"], w["scraped"]) == key]
           for key in ((False, False), (True, False), (True, True))}
    med = {key: statistics.median(v) for key, v in pct.items()}
    scrapes = sorted(t for r in runs for w in r["windows"] for t in w["metrics_s"])
    renders = [x for r in runs for w in r["windows"] for x in w.get("render_s", [])]
    summary = {"triggers": args.triggers, "window_s": args.window, "rounds": args.rounds,
               "cpu_pct": {"off": pct[(False, False)], "on_unscraped": pct[(True, False)], "on_scraped": pct[(True, True)]},
               "cpu_pct_median": {"off": med[(False, False)], "on_unscraped": med[(True, False)], "on_scraped": med[(True, True)]},
               "scrape_cost_pct_points": round(med[(True, True)] - med[(True, False)], 2),
               "metrics_ms": _stats(scrapes), "render_wall_ms": _stats([w for w, _ in renders]),
               "render_cpu_ms": _stats([c for _, c in renders]),
               "scrape_cost_pct_of_supervisor": round(100 * (med[(True, True)] - med[(True, False)]) / med[(False, False)], 1),
               "floor_cost_pct_points": round(floor_pct[True] - floor_pct[False], 2), "floor": floor, "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"health-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps(summary, indent=2))
    print(f"supervisor CPU % (median of windows): health off {med[(False, False)]}, on unscraped {med[(True, False)]}, "
          f"on scraped every second {med[(True, True)]}; scraping costs {summary['scrape_cost_pct_points']} points")
    print(f"/metrics scrape ms over every scrape: {summary['metrics_ms']}; the server rendering it: wall "
          f"{summary['render_wall_ms']}, CPU {summary['render_cpu_ms']}")
    print(f"that is {summary['scrape_cost_pct_of_supervisor']}% of the supervisor's CPU with health off; a bare HTTP "
          f"server answering {body} bytes a second costs {summary['floor_cost_pct_points']} points (the floor)")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
