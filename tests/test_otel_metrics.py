"""Airflow's own metrics through OpenTelemetry (``[metrics] otel_on``), with the loop they concern.

A real supervisor with two loops exports through Airflow's ``Stats`` (its ``SafeOtelLogger`` and
the OpenTelemetry SDK's OTLP/HTTP exporter, as Airflow 3.3.2 configures them) to a collector this
test runs: a real HTTP server decoding each ``ExportMetricsServiceRequest`` with
``opentelemetry-proto`` (installed with Airflow). The statsd side is in ``test_health``.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from mt_testsupport.home import FIRE_AT, WAIT_FOREVER, AirflowHome, DeferSpec, deferring_bundle, iso_in

pytestmark = pytest.mark.timeout(180)  # the loops are routed their triggers before they are up

CONFIG = """
[loops.team_a]
bundles = ["team_a"]
[loops.team_b]
bundles = ["team_b"]
"""


class Collector(ThreadingHTTPServer):
    """An OTLP/HTTP metrics receiver: (metric name, attributes, value) of every data point."""

    daemon_threads = True

    def __init__(self) -> None:
        self.points: list[tuple[str, dict[str, str], float]] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Receive)
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()

    def find(self, name: str, **attrs: str) -> list[float]:
        with self.lock:
            return [v for n, a, v in self.points if n == name and attrs.items() <= a.items()]


class _Receive(BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportMetricsServiceRequest.FromString(body)
        points = []
        for rm in request.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    data = metric.gauge if metric.HasField("gauge") else metric.sum if metric.HasField("sum") else None
                    for dp in data.data_points if data is not None else ():
                        attrs = {kv.key: kv.value.string_value for kv in dp.attributes}
                        points.append((metric.name, attrs, dp.as_double if dp.HasField("as_double") else dp.as_int))
        with self.server.lock:
            self.server.points += points
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_airflow_metrics_reach_an_otel_collector_with_loop_and_bundle(tmp_path, start_triggerer):
    collector = Collector()
    try:
        home = AirflowHome.create(tmp_path / "home", {"team_a": deferring_bundle("dag_a", n_tasks=2),
                                                      "team_b": deferring_bundle("dag_b", n_tasks=2)},
                                  extra_config={"metrics": {"otel_on": "True"}})
        refs = home.defer_many([DeferSpec("dag_a", f"t{i}", WAIT_FOREVER, {"marker_path": str(tmp_path / f"a{i}")})
                                for i in range(2)] + [DeferSpec("dag_b", "t0", WAIT_FOREVER, {"marker_path": str(tmp_path / "b")}),
                                                      DeferSpec("dag_b", "t1", FIRE_AT, {"moment": iso_in(5)})])
        mt = start_triggerer(home, "--skip-serve-logs", "--no-health", config=CONFIG, env={
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": f"http://127.0.0.1:{collector.server_address[1]}/v1/metrics",
            "OTEL_METRIC_EXPORT_INTERVAL": "1000"})

        def running() -> bool:
            a = collector.find("airflow.triggers.running", loop="team_a", bundle="team_a")
            up = collector.find("airflow.multitrigger.loop.up", loop="team_a")
            return bool(a and up and a[-1] == 2 and up[-1] == 1)

        home.wait_for(running, timeout=120, message=lambda: f"{collector.points[-20:]}\n{mt.text()[-3000:]}")
        # An event, counted once written (stock counts triggers.succeeded after on_trigger_event).
        home.wait_for_states([refs[-1]], "scheduled", timeout=60)
        home.wait_for(lambda: collector.find("airflow.triggers.succeeded", loop="team_b", bundle="team_b")[-1:] == [1]
                      and collector.find("airflow.triggers.running", loop="team_b")[-1:] == [1], timeout=30,
                      message=lambda: str([p for p in collector.points if "succeeded" in p[0]]))
        assert not collector.find("airflow.triggers.succeeded", loop="team_a")
        # The job's heartbeat (every [scheduler] job_heartbeat_sec), a counter: an OTLP sum.
        home.wait_for(lambda: collector.find("airflow.triggerer_heartbeat"), timeout=30,
                      message=lambda: str(sorted({n for n, _, _ in collector.points})))
        assert set(collector.find("airflow.triggers.running", loop="default", bundle="*")) == {0}  # idle, reported
    finally:
        collector.shutdown()
