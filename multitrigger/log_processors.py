"""
Cheaper, exact equivalents of stock structlog processors, for the loop's chain and the supervisor's.

Checked against Airflow 3.3.2 (``airflow.sdk._shared.logging.structlog.redact_jwt``) and
structlog 26.1.0.

``redact_jwt`` runs ``re.sub(JWT_PATTERN, "eyJ***", value)`` on every string value of every record
(~10 a record), in the loop that makes the record and again in the supervisor that files it: ~12 %
of a loop's CPU in a burst of firing triggers (py-spy, issue 13). Every match of ``JWT_PATTERN``
starts with the literal ``eyJ``, so a string without it is left as it is, without the regex; one
with it gets stock's substitution. ``use_in_structlog`` swaps it into the process's configured
chain in place (structlog's loggers, cached ones too, hold that very list), so every record the
loop sends is the bytes stock's chain would make (``tests/test_inline_log.py``).

No metadata-database imports: the loop imports it.
"""

from __future__ import annotations

from typing import Any

import structlog

from airflow.sdk._shared.logging import structlog as af_structlog


def redact_jwt(logger: Any, method_name: str, event_dict: Any) -> Any:
    """Stock ``redact_jwt``, without the regex for strings that cannot match it (no ``eyJ``)."""
    for key, value in event_dict.items():
        if isinstance(value, str) and "eyJ" in value:
            event_dict[key] = af_structlog.JWT_PATTERN.sub("eyJ***", value)
    return event_dict


def use_in_structlog() -> int:
    """Replace stock ``redact_jwt`` in structlog's configured chain (in place); how many replaced."""
    processors = structlog.get_config()["processors"]  # the live list, not a copy
    swapped = 0
    for i, processor in enumerate(processors):
        if processor is af_structlog.redact_jwt:
            processors[i] = redact_jwt
            swapped += 1
    return swapped
