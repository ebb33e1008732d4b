"""
Per-loop health, for real: one `multitrigger run` supervisor with two loops and real deferred task
instances, queried over real HTTP (``/health/*``, ``/loops``, ``/metrics``), through the
``multitrigger status`` command, and through Airflow's own statsd metrics received on a real UDP
socket opened by the test. One supervisor serves every test of this module (in order); the last
test kills a loop, so it runs last.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mt_testsupport.datagrams import Datagrams
from mt_testsupport.home import WAIT_FOREVER, AirflowHome, DeferSpec, deferring_bundle
from tests.conftest import MULTITRIGGER, Triggerer

pytestmark = pytest.mark.timeout(240)
CRASH = "mt_testsupport.crash_triggers."
BLOCKING = "mt_testsupport.bench_triggers.BlockingTrigger"
# team_a's first restart is immediate (RestartPolicy); the second comes 6 s after its crash, so a
# test sees it down ("backing off") before it is back.
CONFIG = """
[loops.team_a]
bundles = ["team_a"]
[loops.team_a.restart]
backoff_initial = 6.0
backoff_max = 6.0
jitter = 0.0
[loops.team_b]
bundles = ["team_b"]
[loops.team_b.limits]
memory = "1G"
best_effort = true
[loops.team_c]
bundles = ["team_c"]
"""
#: Where team_b gets a cgroup of its own (root on a cgroup v1 host, as this machine and CI's).
CGROUPS = os.geteuid() == 0 and Path("/sys/fs/cgroup/memory/cgroup.procs").exists()


class Running:
    def __init__(self, home: AirflowHome, mt: Triggerer, url: str, refs: dict, statsd: Datagrams) -> None:
        self.home, self.mt, self.url, self.refs, self.statsd = home, mt, url, refs, statsd

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def loops(self) -> dict[str, dict]:
        return {loop["name"]: loop for loop in json.loads(self.get("/loops")[1])["loops"]}

    def statsd_wait(self, pattern: str, timeout: float = 20) -> str:
        """The first statsd line received (since the start) matching ``pattern``."""
        return self.statsd.wait_for(pattern, timeout)

    def trigger_id(self, key: str) -> int:
        return self.home.ti_state(self.refs[key]).trigger_id

    def status(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([MULTITRIGGER, "status", *args], env=self.home.env({"COLUMNS": "200"}),
                              capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory):
    statsd = Datagrams.udp()
    statsd.drain()
    root = tmp_path_factory.mktemp("health")
    bundles = {"team_a": deferring_bundle("dag_a", n_tasks=3), "team_b": deferring_bundle("dag_b", n_tasks=4),
               "team_c": deferring_bundle("dag_c", n_tasks=1)}
    home = AirflowHome.create(root / "home", bundles, extra_config={"metrics": {
        "statsd_on": "True", "statsd_host": "127.0.0.1", "statsd_port": str(statsd.port),
        "statsd_prefix": "airflow", "statsd_influxdb_enabled": "True"}})
    specs = {
        **{f"a{i}": DeferSpec("dag_a", f"t{i}", WAIT_FOREVER, {"marker_path": str(root / f"a{i}")}) for i in range(3)},
        "b0": DeferSpec("dag_b", "t0", WAIT_FOREVER, {"marker_path": str(root / "b0")}),
        "block": DeferSpec("dag_b", "t1", CRASH + "BlockOnceTrigger", {"after": 1.0, "seconds": 1.0}, validate=False),
        "print": DeferSpec("dag_b", "t2", CRASH + "PrintAndWaitTrigger", {"after": 0.5}, validate=False),
        "slowinit": DeferSpec("dag_b", "t3", CRASH + "SlowInitTrigger", {"seconds": 1.0}, validate=False),
        # team_c's loop is blocked 5 s out of every 6 (never long enough to be killed for it)
        "hog": DeferSpec("dag_c", "t0", BLOCKING, {"block_seconds": 5.0, "every_seconds": 1.0}, validate=False),
    }
    refs = dict(zip(specs, home.defer_many(list(specs.values()))))
    cfg = home.path / "multitrigger.toml"
    cfg.write_text(textwrap.dedent(CONFIG))
    log = home.path / "mt.log"
    with log.open("wb") as fh:
        popen = subprocess.Popen([MULTITRIGGER, "run", "--skip-serve-logs", "--config", str(cfg), "--health-port", "0"],
                                 env=home.env(), stdout=fh, stderr=subprocess.STDOUT, cwd=home.path)
    mt = Triggerer(popen, log)
    try:
        address = home.path / "multitrigger" / "health.json"
        home.wait_for(address.exists, timeout=120, message=lambda: mt.text()[-2000:])
        doc = json.loads(address.read_text())
        assert doc["pid"] == popen.pid and doc["url"].startswith("http://127.0.0.1:")  # loopback by default
        running = Running(home, mt, doc["url"], refs, statsd)
        yield running
    finally:
        mt.stop()
        statsd.close()
    assert not address.exists()  # removed at shutdown


def test_ready_once_both_loops_are_up_and_live(running):
    assert running.get("/health/live")[0] == 200
    seen = []

    def ready():
        code, body = running.get("/health/ready")
        seen.append((code, json.loads(body)))
        return code == 200

    running.home.wait_for(ready, timeout=120, message=lambda: str(seen[-1:]))
    assert seen[-1][1] == {"ready": True, "not_ready": []}
    for code, body in seen[:-1]:  # before: 503 with what was missing, in words
        assert code == 503 and body["not_ready"] and all(
            re.match(r"(loop team_[abc] is starting|has not claimed)", p) for p in body["not_ready"]), body
    loops = running.loops()
    assert {"team_a", "team_b", "team_c", "default"} == set(loops)
    assert loops["default"]["state"] == "idle" and not loops["default"]["wanted"]  # no trigger of its own
    for name in ("team_a", "team_b"):
        loop = loops[name]
        assert loop["state"] == "running" and loop["pid"] and loop["bundles"] == [name], loop
        assert loop["level"] == ("cgroup" if name == "team_b" else "process") and loop["interpreter"] == sys.executable
        assert Path(f"/proc/{loop['pid']}").exists()
    assert loops["team_a"]["limits"] is None and loops["team_a"]["cgroup_usage"] is None
    assert loops["team_b"]["limits"]["memory"] == 1 << 30
    if CGROUPS:  # its own cgroup, and that cgroup's usage
        assert loops["team_b"]["cgroup_path"].endswith("team_b"), loops["team_b"]
        assert loops["team_b"]["cgroup_usage"]["memory_bytes"] > 1_000_000


def _metrics(running) -> dict[tuple[str, tuple], float]:
    code, text = running.get("/metrics")
    assert code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_parse_and_match_the_db_and_airflow_stats_carry_the_loop(running):
    home = running.home
    ((job_id,),) = home.sql("SELECT id FROM job WHERE job_type = 'TriggererJob' AND end_date IS NULL")

    def db_running(dag_id: str) -> int:
        return home.sql("SELECT count(*) FROM trigger t JOIN task_instance ti ON ti.trigger_id = t.id "
                        "WHERE t.triggerer_id = :job AND ti.dag_id = :dag", {"job": job_id, "dag": dag_id})[0][0]

    def matches():
        m = _metrics(running)
        got = {loop: m.get(("multitrigger_loop_triggers_running", (("bundle", loop), ("loop", loop))))
               for loop in ("team_a", "team_b")}
        lag = ("multitrigger_loop_lag_seconds", (("bundle", "team_a"), ("loop", "team_a"), ("quantile", "0.99")))
        return got if lag in m and got == {"team_a": db_running("dag_a"), "team_b": db_running("dag_b")} == {"team_a": 3, "team_b": 4} else None

    home.wait_for(matches, timeout=60, message=lambda: str(_metrics(running)))
    a = (("bundle", "team_a"), ("loop", "team_a"))
    # A loop's CPU is read in 10 ms ticks: a loop forked a moment ago, its 3 triggers started and
    # idle since, may not have spent one yet (its lag probe, every 0.1 s, soon has).
    cpu = ("multitrigger_loop_cpu_seconds_total", a)
    home.wait_for(lambda: _metrics(running).get(cpu, 0) > 0, timeout=30, message="team_a's loop CPU counted")
    m = _metrics(running)
    assert m[("multitrigger_ready", ())] == 1 and m[("multitrigger_triggers_running", ())] == 8
    assert m[("multitrigger_log_files_open", ())] >= 1 and m[("multitrigger_log_lines_dropped_total", ())] == 0
    assert ("multitrigger_log_file_reopens_total", ()) in m
    assert m[("multitrigger_loop_up", a)] == 1 and m[("multitrigger_loop_restarts_total", a)] == 0
    assert m[("multitrigger_loop_state", a + (("state", "running"),))] == 1
    assert m[("multitrigger_loop_memory_pss_bytes", a)] > 1_000_000 and m[("multitrigger_loop_cpu_seconds_total", a)] > 0
    assert ("multitrigger_loop_lag_seconds", a + (("quantile", "0.99"),)) in m  # measured in the loop
    info = [k for k in m if k[0] == "multitrigger_loop_info" and ("loop", "team_a") in k[1]]
    assert info and ("airflow_version", "3.3.2") in info[0][1] and ("level", "process") in info[0][1]
    assert m[("process_cpu_seconds_total", ())] > 0  # the supervisor's own
    b = (("bundle", "team_b"), ("loop", "team_b"))
    assert m[("multitrigger_loop_limit", (("bundle", "team_b"), ("limit", "memory"), ("loop", "team_b")))] == 1 << 30
    if CGROUPS:
        assert m[("multitrigger_loop_cgroup_memory_bytes", b)] > 1_000_000

    # Airflow's Stats (statsd, influx-style tags): the stock names, now tagged with loop and bundle.
    running.statsd_wait(r"^airflow\.triggers\.running,hostname=[^,]+,loop=team_a,bundle=team_a:3\|g$")
    running.statsd_wait(r"^airflow\.triggerer\.capacity_left,hostname=[^,]+:\d+\|g$")
    running.statsd_wait(r"^airflow\.triggerer_heartbeat:1\|c$")


def test_blocking_trigger_is_a_blocked_episode_naming_it(running):
    block_id = running.trigger_id("block")

    def episode():
        return [b for b in running.loops()["team_b"]["worst_blockers"] if b["trigger_id"] == block_id]

    (blocker,) = running.home.wait_for(episode, timeout=60)
    assert blocker["classpath"] == CRASH + "BlockOnceTrigger"
    assert (blocker["dag_id"], blocker["task_id"]) == ("dag_b", "t1") and blocker["run_id"]
    assert blocker["episodes"] == 1 and 0.9 < blocker["seconds_max"] < 5, blocker
    assert running.loops()["team_b"]["blocked_episodes"] >= 1 and running.loops()["team_a"]["blocked_episodes"] == 0
    # Logged once, in the supervisor's log, with the trigger and its task.
    lines = [ln for ln in running.mt.text().splitlines()
             if "event loop blocked by trigger" in ln and re.search(rf"trigger_id={block_id}\b", ln)]
    assert len(lines) == 1, lines
    for field in (f"trigger_id={block_id}", f"classpath={CRASH}BlockOnceTrigger", "dag_id=dag_b", "task_id=t1",
                  "loop=team_b", "bundle=team_b"):
        assert field in lines[0], lines[0]
    m = _metrics(running)
    key = ("multitrigger_trigger_blocked_episodes_total", (("bundle", "team_b"), ("classpath", CRASH + "BlockOnceTrigger"),
                                                           ("loop", "team_b"), ("trigger_id", str(block_id))))
    assert m[key] == 1
    assert "Triggerer's async thread was blocked" not in running.mt.text()  # stock's nameless warning is gone
    # Airflow's counter, now with the loop; its gauge of the loop's lag too (ms).
    running.statsd_wait(r"^airflow\.triggers\.blocked_main_thread,hostname=[^,]+,loop=team_b,bundle=team_b:\d+\|c$")
    running.statsd_wait(r"^airflow\.multitrigger\.loop\.lag_p99,hostname=[^,]+,loop=team_b,bundle=team_b:[\d.]+\|g$")


def test_a_blocking_constructor_is_blamed_on_its_trigger(running):
    slow_id = running.trigger_id("slowinit")

    def episode():
        return [b for b in running.loops()["team_b"]["worst_blockers"] if b["trigger_id"] == slow_id]

    (blocker,) = running.home.wait_for(episode, timeout=60)
    assert blocker["classpath"] == CRASH + "SlowInitTrigger" and blocker["task_id"] == "t3", blocker
    assert blocker["episodes"] == 1 and 0.9 < blocker["seconds_max"] < 5, blocker


def test_a_loop_blocked_now_names_the_trigger_running_in_it(running):
    hog_id = running.trigger_id("hog")

    def blocking():
        return running.loops()["team_c"]["blocking_now"]

    now = running.home.wait_for(blocking, timeout=60, interval=0.25)
    assert now["trigger_id"] == hog_id and now["classpath"] == BLOCKING and (now["dag_id"], now["task_id"]) == ("dag_c", "t0")
    assert now["silent_s"] >= 3.0
    shown = rf"loop team_c silent for [\d.]+ s, running trigger {hog_id} \({re.escape(BLOCKING)}, dag_c/t0/"
    running.home.wait_for(lambda: re.search(shown, running.status().stdout), timeout=40)  # while a block lasts
    # Each ended block is an episode of that trigger, and team_c was never killed for it.
    (hog,) = running.home.wait_for(lambda: [b for b in running.loops()["team_c"]["worst_blockers"] if b["trigger_id"] == hog_id],
                                   timeout=30)
    assert hog["seconds_max"] >= 4.5 and running.loops()["team_c"]["restarts"] == 0


def test_print_from_a_trigger_goes_to_its_own_log_not_the_supervisors(running):
    print_id = running.trigger_id("print")

    def trigger_log():
        for path in running.home.logs_dir.rglob("*.trigger.*.log"):
            if "dag_id=dag_b" in str(path) and "task_id=t2" in str(path) and "on stderr" in path.read_text():
                return path
        return None

    text = running.home.wait_for(trigger_log, timeout=60).read_text()
    records = [json.loads(line) for line in text.splitlines()]
    printed = [(r["event"], r["stream"]) for r in records if r.get("printed_by_trigger") == print_id]
    assert printed == [("hello from PrintAndWaitTrigger on stdout", "stdout"), ("a partial line, completed", "stdout"),
                       ("hello from PrintAndWaitTrigger on stderr", "stderr")], text
    assert "PrintAndWaitTrigger on" not in running.mt.text()


def test_status_table_and_json(running):
    running.home.wait_for(lambda: running.get("/health/ready")[0] == 200, timeout=60)
    result = running.status()
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert re.search(rf"multitrigger at {re.escape(running.url)}: healthy", out), out
    header = re.search(r"^loop\s+bundles\s+state\s+pid\s+python/airflow\s+triggers\s+events\s+failures\s+"
                       r"restarts \(10m\)\s+last exit\s+check-in\s+lag p50/p99 ms\s+blocked\s+memory\s+cpu s$", out, re.M)
    assert header, out
    rows = {m[1]: m[0] for m in re.finditer(r"^(\S+)\s+\S+\s+(?:running|idle).*$", out, re.M)}
    assert {"team_a", "team_b", "default"} <= set(rows), out
    assert re.match(r"team_a\s+team_a\s+running\s+\d+\s+3\.11\.\d+/3\.3\.2\s+3\s+0\s+0\s+0 \(0\)\s+-\s+\d+\.\d s\s+\d+/\d+\s+0\s+\d+ MiB", rows["team_a"]), rows
    assert re.match(r"default\s+\*\s+idle\s+-", rows["default"]), rows
    # the worst offender table names the blocking trigger
    assert re.search(rf"^team_b\s+{running.trigger_id('block')}\s+{re.escape(CRASH)}BlockOnceTrigger\s+dag_b/t1/", out, re.M), out

    as_json = running.status("--json")
    assert as_json.returncode == 0
    doc = json.loads(as_json.stdout)
    assert doc["ready"] and doc["live"] and doc["db"] == "ok"
    assert {loop["name"]: loop["triggers"] for loop in doc["loops"]} == {"default": 0, "team_a": 3, "team_b": 4, "team_c": 1}


def test_status_watch_redraws_until_stopped(running):
    """``--watch 0.3`` keeps fetching and redrawing: several frames in a few seconds, each a fresh read."""
    env = running.home.env({"COLUMNS": "200", "PYTHONUNBUFFERED": "1"})
    with pytest.raises(subprocess.TimeoutExpired) as stopped:
        subprocess.run([MULTITRIGGER, "status", "--watch", "0.3"], env=env, capture_output=True, text=True, timeout=8)
    out = stopped.value.stdout
    out = out.decode() if isinstance(out, bytes) else out or ""
    frames = re.findall(rf"multitrigger at {re.escape(running.url)}: (?:healthy|NOT HEALTHY)", out)
    assert len(frames) >= 3, out[-3000:]


def test_loop_killed_from_outside_shows_restart_with_reason_and_status_fails(running):
    first = running.loops()["team_a"]["pid"]
    os.kill(first, signal.SIGKILL)  # restarted at once
    old = running.home.wait_for(lambda: (lp := running.loops()["team_a"])["state"] == "running"
                                and lp["pid"] != first and lp["pid"], timeout=60)
    os.kill(old, signal.SIGKILL)  # restarted after backoff_initial

    def down():
        loop = running.loops()["team_a"]
        return loop if loop["state"] == "backing off" else None

    loop = running.home.wait_for(down, timeout=30, interval=0.1)
    assert loop["restarts"] == 2 and loop["restarts_recent"] == 2 and "SIGKILL" in loop["last_exit"], loop
    assert loop["last_exit_at"] > time.time() - 30
    code, body = running.get("/health/ready")
    assert code == 503 and any(p.startswith("loop team_a is backing off; last exit: ") and "SIGKILL" in p
                               for p in json.loads(body)["not_ready"]), body
    result = running.status()
    assert result.returncode == 1 and "NOT HEALTHY" in result.stdout and "backing off" in result.stdout, result.stdout
    assert running.status("--json").returncode == 1
    # Counted as it is emitted (every few seconds): the two restarts are +1 and +1, or one +2.
    running.statsd_wait(r"^airflow\.multitrigger\.loop\.restarts,hostname=[^,]+,loop=team_a,bundle=team_a:[12]\|c$")

    back = running.home.wait_for(lambda: (lp := running.loops()["team_a"])["state"] == "running" and lp, timeout=60)
    assert back["pid"] != old and back["restarts"] == 2
    m = _metrics(running)
    assert m[("multitrigger_loop_restarts_total", (("bundle", "team_a"), ("loop", "team_a")))] == 2
    assert m[("multitrigger_loop_restarts_last_10m", (("bundle", "team_a"), ("loop", "team_a")))] == 2
    assert running.status().returncode == 0  # healthy again (the recent restart is highlighted, not fatal)


def test_health_flags_and_config_keys(tmp_path, capsys):
    """``--no-health`` and ``[health]`` reach the config the supervisor runs with."""
    from multitrigger.cli import _with_health_flags, build_parser, cmd_run
    from multitrigger.config import load_config

    cfg = tmp_path / "mt.toml"
    cfg.write_text('[health]\nhost = "0.0.0.0"\nport = 9000\n')
    config = load_config(cfg)
    assert (config.health.host, config.health.port, config.health.enabled) == ("0.0.0.0", 9000, True)
    args = build_parser().parse_args(["run", "--health-port", "0", "--health-host", "127.0.0.2"])
    assert _with_health_flags(config, args).health.model_dump() == {"enabled": True, "host": "127.0.0.2", "port": 0,
                                                                    "live_threshold": 10.0}
    assert not _with_health_flags(config, build_parser().parse_args(["run", "--no-health"])).health.enabled
    # `multitrigger run`'s own command function (in-process: main() would first prestart zygotes)
    assert cmd_run(build_parser().parse_args(["run", "--config", str(cfg), "--health-port", "70000"])) == 2
    assert "--health-port: Input should be less than or equal to 65535" in capsys.readouterr().err
    cfg.write_text("[health]\nport = 70000\n")
    with pytest.raises(Exception) as err:
        load_config(cfg)
    assert "health.port" in str(err.value) and str(cfg) in str(err.value)
