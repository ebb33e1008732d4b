"""
Stock's per-trigger log processors, with two of them made cheaper and their output unchanged.

Checked against Airflow 3.3.2 (``airflow.sdk.log.logging_processors``, ``mask_logs``;
``airflow.sdk._shared.logging.structlog.redact_jwt``; ``airflow.sdk._shared.secrets_masker``).

The supervisor writes every log record of every trigger through stock's chain (the stock consumer,
``_process_log_messages_from_subprocess``): secrets are masked there, not in the loop (a loop logs
with ``sending_to_supervisor=True``), so the chain must run. In a burst two of its steps were most
of the supervisor's time per line (py-spy, issue 13; ~94 us a line measured alone):

* ``mask_logs``: ``SecretsMasker._redact`` asks ``should_hide_value_for_key`` for every key of every
  record (~12 a record), and each answer lower-cases the key, runs ``re.sub`` on it and tests it
  against every sensitive field name (23 by default): half of a line's cost. The answer depends
  only on the key, ``hide_sensitive_var_conn_fields`` and ``sensitive_variables_fields``, so
  ``MemoMasker`` remembers it per key and forgets everything when either setting changes.
  ``MemoMasker`` is a view of the process's masker: it shares its instance dictionary (every
  secret added later, the replacer, the settings), so only the key test is new; everything else is
  stock's ``_redact``.
  With the key answers memoized, stock's walk itself was most of what was left (~22 us of a line's
  ~27: two Python calls with keyword arguments and five type tests per value, for a record of a
  dozen flat values): ``MemoMasker.redact_json`` walks a record made of what JSON decodes to (exact
  ``dict``, ``list``, ``str``, ``int``, ``float``, ``bool``, ``None``, string keys) in one loop per
  container, with stock's rules: every key asked (at any depth), a hidden key's value through
  stock's own ``_redact_all``, strings through the replacer down to ``MAX_RECURSION_DEPTH``, lists
  walked with no name. Anything else in the record (a tuple, an enum, an object, nesting past
  ``WALK_DEPTH``, any error) and the whole record takes stock's ``redact`` instead, so stock's own
  handling (and its "<redaction-failed>") applies; the walk has no side effect to undo.
* ``redact_jwt`` runs ``re.sub(JWT_PATTERN, ...)`` on every string value; the cheaper one skips the
  regex for strings without ``eyJ``, where it cannot match (``multitrigger.log_processors``).

``faster(processors)`` returns the chain with those two replaced and everything else, in order,
untouched. ``tests/test_trigger_log_chain.py`` proves the bytes written equal stock's.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import structlog

from airflow.sdk._shared.logging import structlog as af_structlog
from airflow.sdk._shared.secrets_masker import secrets_masker as masker_module
from airflow.sdk.log import mask_logs
from multitrigger.log_processors import redact_jwt

#: Keys remembered at most (a trigger may log any key): past this the memo starts over.
MEMO_KEYS = 4096


#: Containers nested deeper than this take stock's walk (which, at two frames a level, would meet
#: Python's recursion limit long before this walk would: it must fail the way stock fails).
WALK_DEPTH = 64
#: Values the walk returns as they are (exact types: a subclass, e.g. an enum, takes stock's walk).
_LEAVES = frozenset({int, float, bool, type(None)})


class _NotJson(Exception):
    """The record holds something the walk does not know: stock's walk takes it."""


class _Memo:
    __slots__ = ("hide", "fields", "count", "snapshot", "answers")

    def __init__(self) -> None:
        self.hide: object = None
        self.fields: object = None
        self.count = -1
        self.snapshot: Any = None  # a copy of ``fields`` (of its own type) when the answers were started
        self.answers: dict[str, bool] = {}


class MemoMasker(masker_module.SecretsMasker):
    """A view of the process's ``SecretsMasker`` (its very instance dictionary) that remembers
    ``should_hide_value_for_key`` per key; the memo lives in a slot, outside the shared dictionary."""

    __slots__ = ("_memo",)

    def __init__(self, base: masker_module.SecretsMasker) -> None:  # a view: no SecretsMasker.__init__
        self.__dict__ = base.__dict__
        self._memo = _Memo()

    def should_hide_value_for_key(self, name: Any) -> bool:
        if not isinstance(name, str):
            return super().should_hide_value_for_key(name)
        answers = self._answers()
        answer = answers.get(name)
        if answer is None:
            answer = answers[name] = super().should_hide_value_for_key(name)
        return answer

    def _answers(self) -> dict[str, bool]:
        """The memo's answers, forgotten first if either setting changed (or it grew too big)."""
        memo = self._memo
        fields, hide = self.sensitive_variables_fields, self.hide_sensitive_var_conn_fields
        if (memo.fields is not fields or memo.hide is not hide or memo.count != len(fields)
                or len(memo.answers) > MEMO_KEYS):
            memo.fields, memo.hide, memo.count, memo.answers = fields, hide, len(fields), {}
            memo.snapshot = copy.copy(fields)
        return memo.answers

    def _forget_if_edited(self) -> None:
        """Once per record: forget the answers if the fields list was edited in place (Airflow
        assigns a new list, but a plugin may not); the per-key check above sees only a new list."""
        memo = self._memo
        if memo.fields is not None and memo.snapshot != memo.fields:
            memo.fields = None

    def redact_json(self, record: Any) -> Any:
        """``redact(record)``: the walk below for a record of JSON values, else stock's own."""
        self._forget_if_edited()
        if type(record) is dict:
            try:
                replacer = self.replacer
                return self._walk_dict(record, 0, self.MAX_RECURSION_DEPTH, replacer.sub if replacer else None)
            except Exception:  # noqa: BLE001 - not JSON values, or an error: stock's walk, stock's handling
                pass
        return self.redact(record)

    def _walk_dict(self, item: dict[Any, Any], depth: int, max_depth: int, sub: Any) -> dict[Any, Any]:
        """Stock ``_redact`` of a dict at ``depth`` (its values at ``depth + 1``)."""
        if depth > WALK_DEPTH:
            raise _NotJson("deep")
        depth += 1
        answers, out = self._answers(), {}
        for key, value in item.items():
            if type(key) is not str:
                raise _NotJson("key")
            hide = answers.get(key)
            if hide is None:
                hide = self.should_hide_value_for_key(key)
            if hide and key:
                out[key] = self._redact_all(value, depth, max_depth, replacement="***")
                continue
            kind = type(value)
            if kind is str:
                out[key] = sub("***", value) if sub is not None and depth <= max_depth else value
            elif kind in _LEAVES:
                out[key] = value
            else:
                out[key] = self._walk(value, kind, depth, max_depth, sub)
        return out

    def _walk(self, item: Any, kind: type, depth: int, max_depth: int, sub: Any) -> Any:
        """Stock ``_redact`` of a value with no name (a list's items) or a container."""
        if kind is dict:
            return self._walk_dict(item, depth, max_depth, sub)
        if kind is list:
            if depth > WALK_DEPTH:
                raise _NotJson("deep")
            out = []
            for value in item:
                vkind = type(value)
                if vkind is str:
                    out.append(sub("***", value) if sub is not None and depth + 1 <= max_depth else value)
                elif vkind in _LEAVES:
                    out.append(value)
                else:
                    out.append(self._walk(value, vkind, depth + 1, max_depth, sub))
            return out
        raise _NotJson(kind.__name__)


class FastMaskLogs:
    """``mask_logs`` (``redact(event_dict)`` with the process's masker), through a ``MemoMasker``."""

    def __init__(self) -> None:
        self._base: masker_module.SecretsMasker | None = None
        self._view: MemoMasker | None = None

    def _masker(self, base: masker_module.SecretsMasker | None = None) -> MemoMasker:
        base = masker_module._secrets_masker() if base is None else base
        if base is not self._base or self._view is None:
            self._base, self._view = base, MemoMasker(base)
        return self._view

    def __call__(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        base = masker_module._secrets_masker()
        if type(base) is not masker_module.SecretsMasker:  # a subclass (a plugin's): its own code, stock's way
            return mask_logs(logger, method_name, event_dict)
        return self._masker(base).redact_json(event_dict)


_FAST_MASK = FastMaskLogs()


def faster(processors: Iterable[structlog.typing.Processor]) -> tuple[structlog.typing.Processor, ...]:
    """Stock's chain with ``mask_logs`` and ``redact_jwt`` swapped for the equivalents above."""
    swap = {id(mask_logs): _FAST_MASK, id(af_structlog.redact_jwt): redact_jwt}
    return tuple(swap.get(id(p), p) for p in processors)


__all__ = ["FastMaskLogs", "MemoMasker", "faster", "redact_jwt"]
