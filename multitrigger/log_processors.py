"""
Cheaper, exact equivalents of stock structlog processors, for the loop's chain and the supervisor's.

Checked against Airflow 3.3.2 (``airflow.sdk._shared.logging.structlog.redact_jwt``) and
structlog 26.1.0 (``structlog.contextvars.merge_contextvars``).

``redact_jwt`` runs ``re.sub(JWT_PATTERN, "eyJ***", value)`` on every string value of every record
(~10 a record), in the loop that makes the record and again in the supervisor that files it: ~12 %
of a loop's CPU in a burst of firing triggers (py-spy, issue 13). Every match of ``JWT_PATTERN``
starts with the literal ``eyJ``, so a string without it is left as it is, without the regex; one
with it gets stock's substitution. ``use_in_structlog`` swaps it into the process's configured
chain in place (structlog's loggers, cached ones too, hold that very list), so every record the
loop sends is the bytes stock's chain would make (``tests/test_inline_log.py``).

``merge_contextvars`` copies the context and, for every variable in it (structlog's one per bound
key, asyncio's, OpenTelemetry's, greenback's...), tests its name for structlog's prefix and looks
its value up again: ~3 us a record. The equivalent here walks the same copy's items in the same
order and remembers, per variable, the key its name gives (or that it gives none): names never
change. The memo holds at most ``_MAX_KEYS`` variables (it starts again past that), so a library
making variables on the fly cannot grow it without bound.

No metadata-database imports: the loop imports it.
"""

from __future__ import annotations

import contextvars
from typing import Any

import structlog
from structlog.contextvars import STRUCTLOG_KEY_PREFIX, merge_contextvars as stock_merge_contextvars

from airflow.sdk._shared.logging import structlog as af_structlog


def redact_jwt(logger: Any, method_name: str, event_dict: Any) -> Any:
    """Stock ``redact_jwt``, without the regex for strings that cannot match it (no ``eyJ``)."""
    for key, value in event_dict.items():
        if isinstance(value, str) and "eyJ" in value:
            event_dict[key] = af_structlog.JWT_PATTERN.sub("eyJ***", value)
    return event_dict


_PREFIX_LEN = len(STRUCTLOG_KEY_PREFIX)
_MAX_KEYS = 4096
_UNSEEN = object()
#: ContextVar -> the event-dict key its name gives, or None (not structlog's).
_keys: dict[contextvars.ContextVar, str | None] = {}


def merge_contextvars(logger: Any, method_name: str, event_dict: Any) -> Any:
    """Stock ``merge_contextvars``: structlog's bound variables (not unbound: ``...``) as defaults."""
    keys = _keys
    for var, value in contextvars.copy_context().items():
        key = keys.get(var, _UNSEEN)
        if key is _UNSEEN:
            if len(keys) >= _MAX_KEYS:
                keys.clear()
            name = var.name
            key = keys[var] = name[_PREFIX_LEN:] if name.startswith(STRUCTLOG_KEY_PREFIX) else None
        if key is not None and value is not Ellipsis:
            event_dict.setdefault(key, value)
    return event_dict


_SWAPS = ((af_structlog.redact_jwt, redact_jwt), (stock_merge_contextvars, merge_contextvars))


def use_in_structlog() -> int:
    """Replace stock ``redact_jwt`` and ``merge_contextvars`` in structlog's configured chain (in
    place); how many replaced."""
    processors = structlog.get_config()["processors"]  # the live list, not a copy
    swapped = 0
    for i, processor in enumerate(processors):
        for stock, ours in _SWAPS:  # by identity: a processor need not be hashable
            if processor is stock:
                processors[i] = ours
                swapped += 1
    return swapped
