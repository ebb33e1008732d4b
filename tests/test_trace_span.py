"""
A trigger's span (``multitrigger.loop.trace_span``) is stock's: with tracing off, the same span is
current inside the run (a trigger's ``trace.get_current_span()``), the same context after it, and an
exception passes through; with a tracer provider set, stock's function makes it (a recording span).
In-process: the span is made and entered as ``run_trigger`` does it, no loop is needed.
"""

from __future__ import annotations

import uuid

import pytest
from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from airflow.executors.workloads.task import TaskInstanceDTO
from airflow.jobs import triggerer_job_runner as tjr
from multitrigger.loop import trace_span

CARRIER = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}


def _ti(carrier: dict | None) -> TaskInstanceDTO:
    return TaskInstanceDTO(id=uuid.uuid4(), task_id="t", dag_id="d", run_id="r", try_number=1, map_index=2,
                           pool_slots=1, queue="default", priority_weight=1, dag_version_id=uuid.uuid4(),
                           context_carrier=carrier)


def _seen(make, ti, raise_inside: bool = False) -> tuple:
    before = context_api.get_current()
    inside = None
    try:
        with make(ti, 7, "name") as span:
            inside = (type(span), span.get_span_context(), trace.get_current_span() is span, span.is_recording())
            if raise_inside:
                raise KeyError("boom")
    except KeyError as err:
        inside = (*inside, repr(err))
    return inside, context_api.get_current() == before


@pytest.mark.parametrize("carrier", [CARRIER, None], ids=["with-parent", "no-parent"])
@pytest.mark.parametrize("raise_inside", [False, True], ids=["ends", "raises"])
def test_tracing_off_the_same_span(carrier, raise_inside) -> None:
    assert trace_span.tracing_off()
    ti = _ti(carrier)
    assert _seen(trace_span.make_trigger_span, ti, raise_inside) == _seen(trace_span._STOCK, ti, raise_inside)
    assert _seen(trace_span.make_trigger_span, None) == _seen(trace_span._STOCK, None)
    assert isinstance(trace_span.make_trigger_span(ti, 7, "name"), trace_span._CurrentSpan)


def test_tracing_on_stocks_span(monkeypatch: pytest.MonkeyPatch) -> None:
    # A fresh proxy: the module's own would keep the real tracer after this test.
    monkeypatch.setattr(tjr, "tracer", trace.ProxyTracer(tjr.__name__))
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", TracerProvider())
    assert not trace_span.tracing_off()
    with trace_span.make_trigger_span(_ti(CARRIER), 7, "name") as span:
        assert span.is_recording() and span.name == "trigger.t_2"
        assert span.get_span_context().trace_id == int(CARRIER["traceparent"].split("-")[1], 16)


def test_installed_where_run_trigger_looks() -> None:
    saved = tjr._make_trigger_span
    try:
        trace_span.install()
        assert tjr._make_trigger_span is trace_span.make_trigger_span
    finally:
        tjr._make_trigger_span = saved
