"""
Each trigger's OpenTelemetry span as stock makes it, without the layers of a no-op one.

Checked against Airflow 3.3.2 (``airflow.jobs.triggerer_job_runner._make_trigger_span``, called by
``TriggerRunner.run_trigger`` around the whole of a trigger's run) and opentelemetry-api 1.45
(``ProxyTracer``, ``NoOpTracer``, ``use_span``).

With tracing off (no tracer provider set: ``[traces] otel_on`` is false and no
``OTEL_PYTHON_TRACER_PROVIDER`` has been loaded) stock's span is ``NoOpTracer``'s: the parent span
from the task instance's ``context_carrier`` (or the current span), made current for the run by
``use_span`` and ended after it; nothing is recorded. Stock gets there through three generator
context managers (``ProxyTracer`` -> ``NoOpTracer`` -> ``use_span``): ~14 % of a loop's start path
for a trigger. ``make_trigger_span`` makes the same span current with one small context manager:
the same object a trigger gets from ``trace.get_current_span()``, the same context before and after,
exceptions passed through untouched (a non-recording span records nothing). Whenever a real tracer
would answer (a provider is set, or the module's tracer is not a proxy) it is stock's function.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from airflow.jobs import triggerer_job_runner as tjr

try:  # private names (a bundle venv's opentelemetry-api or Airflow may differ): without them, stock's
    from opentelemetry.trace.propagation import _SPAN_KEY

    _STOCK = tjr._make_trigger_span
    _USABLE = hasattr(trace, "_TRACER_PROVIDER") and hasattr(tjr, "tracer")
except (ImportError, AttributeError):
    _USABLE = False
_NOOP = trace.NoOpTracer()


class _CurrentSpan:
    """``use_span(span, end_on_exit=True)`` for a non-recording span."""

    __slots__ = ("_span", "_token")

    def __init__(self, span: trace.Span) -> None:
        self._span = span

    def __enter__(self) -> trace.Span:
        self._token = context_api.attach(context_api.set_value(_SPAN_KEY, self._span))
        return self._span

    def __exit__(self, *exc: object) -> None:
        context_api.detach(self._token)
        self._span.end()


def tracing_off() -> bool:
    """What ``ProxyTracer`` checks before it answers with its no-op tracer."""
    tracer = tjr.tracer
    return type(tracer) is trace.ProxyTracer and tracer._real_tracer is None and not trace._TRACER_PROVIDER


def make_trigger_span(ti: Any, trigger_id: int, name: str) -> Any:
    """Stock ``_make_trigger_span``; with tracing off, the same span made current more cheaply."""
    if not tracing_off():
        return _STOCK(ti, trigger_id, name)
    parent = TraceContextTextMapPropagator().extract(ti.context_carrier) if ti and ti.context_carrier else None
    span = _NOOP.start_span(f"trigger.{name}", context=parent)
    return _CurrentSpan(span) if isinstance(span, trace.NonRecordingSpan) else _STOCK(ti, trigger_id, name)


def install() -> None:
    """``run_trigger`` looks the function up in its module at each call: replace it there (unless
    the private names above are missing, or its tracer is no ``ProxyTracer`` with ``_real_tracer``:
    then stock's stays)."""
    if _USABLE and (type(tjr.tracer) is not trace.ProxyTracer or hasattr(tjr.tracer, "_real_tracer")):
        tjr._make_trigger_span = make_trigger_span
