"""
The runner's own log records made by stock's chain, with the steps whose inputs are known done directly.

Checked against Airflow 3.3.2 (``airflow.sdk._shared.logging.structlog``: ``_make_airflow_structlogger``,
``structlog_processors``) and structlog 26.1.0 (``BoundLoggerBase._process_event``/``_proxy_to_logger``,
``CallsiteParameterAdder``, ``_frames._find_first_app_frame_and_name``, ``JSONRenderer``,
``_json_fallback_handler``).

Stock ``run_trigger`` makes two records per firing trigger ("Trigger fired event", "trigger
completed"), ~15 us each in a quiet process and two to three times that in a loaded loop (py-spy,
issue 13: half a loop's samples in a burst). ``InlineLogger`` (``multitrigger.loop.inline_log``)
knows three things structlog works out again for every record, so ``emit`` runs stock's chain
itself, processor by processor on the live list, and does only those three directly:

* the **bound logger's level method**: Airflow's ``meth`` with no positional arguments is
  ``_proxy_to_logger(level, event, **kw)`` and ``_nop`` makes nothing; ``emit`` does the same
  (``_process_event``'s dict, the processors, the wrapped logger's method, ``DropEvent``) without the
  lazy proxy's ``__getattr__`` and the two structlog frames;
* the **call site**: ``CallsiteParameterAdder`` walks from the frame structlog's async method records
  (``_ASYNC_CALLING_STACK``, which ``InlineLogger`` sets, so that any other processor sees what it
  sees under stock), the awaiting frame ``InlineLogger`` passes here too; ``emit`` walks from that
  frame with the same ignores and runs the same handlers, without asking for the current frame;
* a **TriggerEvent value** reaches the JSON encoder's hook, which asks it for ``__structlog__``
  (pydantic's ``__getattr__`` raises, ~2 us) and then takes its ``repr``. Right before the renderer
  (so ``redact_jwt`` saw the object, not the string, as in stock) ``emit`` puts that ``repr`` in its
  place; the encoder writes the same string.

Anything else (another renderer's default, a subclassed event, an unknown wrapper class, a
``_record``) is done by stock's own code; ``tests/test_inline_log.py`` compares the bytes with stock's.
"""

from __future__ import annotations

from types import FrameType
from typing import Any

from structlog import DropEvent
from structlog.processors import CallsiteParameterAdder, JSONRenderer, _json_fallback_handler

from airflow.sdk._shared.logging import structlog as af_structlog
from airflow.triggers.base import TriggerEvent

_LEVEL_CLASSES = frozenset(af_structlog.LEVEL_TO_FILTERING_LOGGER.values())
#: Airflow's level method (``meth``) and its filtered-out one (``_nop``): one code object each.
_METH = af_structlog.AirflowBoundLoggerFilteringAtNotset.info.__code__
_NOP = af_structlog.AirflowBoundLoggerFilteringAtCritical.debug.__code__
#: A ``TriggerEvent`` has no ``__structlog__``: the fallback handler's answer is its ``repr``.
_EVENT_REPR_IS_FALLBACK = (not hasattr(TriggerEvent, "__structlog__")
                           and "__structlog__" not in TriggerEvent.__private_attributes__
                           and TriggerEvent.model_config.get("extra") != "allow")
_BAD_RESULT = ("Last processor didn't return an appropriate value.  "
               "Valid return values are a dict, a tuple of (args, kwargs), bytes, or a str.")


def _app_frame(frame: FrameType, ignores: tuple[str, ...]) -> tuple[FrameType, str]:
    """``_find_first_app_frame_and_name`` from ``frame`` (no ``stacklevel``)."""
    f = frame
    name = f.f_globals.get("__name__") or "?"
    while name.startswith(ignores):
        if f.f_back is None:
            name = "?"
            break
        f = f.f_back
        name = f.f_globals.get("__name__") or "?"
    return f, name


def emit(proxy: Any, level: str, event: str, kw: dict[str, Any], frame: FrameType) -> bool:
    """Make ``proxy.<level>(event, **kw)``'s record as if called from ``frame``; False: not done, call stock."""
    bound = proxy.bind()
    cls = type(bound)
    if cls not in _LEVEL_CLASSES:
        return False
    code = getattr(cls, level).__code__
    if code is _NOP:
        return True
    if code is not _METH:
        return False
    event_dict: Any = bound._context.copy()
    event_dict.update(**kw)
    event_dict["event"] = event
    logger = bound._logger
    try:
        _run(bound._processors, logger, level, event_dict, frame)
    except DropEvent:
        pass
    return True


def _run(processors: list, logger: Any, level: str, event_dict: Any, frame: FrameType) -> None:
    """``_process_event``'s loop and ``_proxy_to_logger``'s call of the wrapped logger."""
    for proc in processors:
        kind = type(proc)
        if kind is CallsiteParameterAdder and not (event_dict.get("_record") is not None
                                                    and not event_dict.get("_from_structlog", False)):
            f, module = _app_frame(frame, ("structlog", *proc._additional_ignores))
            for parameter, handler in proc._active_handlers:
                event_dict[parameter.value] = handler(module, f)
            continue
        if kind is JSONRenderer and _EVENT_REPR_IS_FALLBACK and proc._dumps_kw.get("default") is _json_fallback_handler:
            _events_as_repr(event_dict)
        event_dict = proc(logger, level, event_dict)
    if isinstance(event_dict, (str, bytes, bytearray)):
        getattr(logger, level)(event_dict)
    elif isinstance(event_dict, tuple):
        getattr(logger, level)(*event_dict[0], **event_dict[1])
    elif isinstance(event_dict, dict):
        getattr(logger, level)(**event_dict)
    else:
        raise ValueError(_BAD_RESULT)


def _events_as_repr(event_dict: dict[str, Any]) -> None:
    """Top-level ``TriggerEvent`` values as the encoder's hook makes them (their ``repr``); one whose
    ``repr`` is not UTF-8 stays (stock's retry sanitises top-level strings only, not the hook's)."""
    for key, value in event_dict.items():
        if type(value) is TriggerEvent:
            try:  # a repr that raises: the hook's str() fallback, by stock's own code
                text = repr(value)
                text.encode("utf-8")
            except Exception:
                continue
            event_dict[key] = text

