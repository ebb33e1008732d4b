"""
The cheaper per-trigger log chain (``multitrigger.supervisor.trigger_log_chain``) writes stock's bytes.

Stock's own consumer (``_process_log_messages_from_subprocess``) is fed the same JSON lines twice:
once for a trigger with stock's ``TriggerLoggingFactory`` (stock's chain, its own file) and once for
a trigger with ``PooledLogFactory`` (the cheaper chain). The records exercise what the two swapped
steps do: sensitive key names at any depth, registered secrets in strings at any depth (and past
the masker's depth limit), JWT-looking values, and the masker's settings changed between records.
"""

from __future__ import annotations

import enum
import json
import types
from pathlib import Path

import msgspec
import pytest

from airflow.jobs.triggerer_job_runner import TriggerLoggingFactory, TriggerRunnerSupervisor
from airflow.sdk._shared.secrets_masker import secrets_masker as masker_module
from airflow.sdk.log import mask_logs
from multitrigger.supervisor.log_files import LogFiles, PooledLogFactory
from multitrigger.supervisor.trigger_log_chain import FastMaskLogs, faster, redact_jwt

SECRET = "s3cr3t-Value-xyz"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig_nature-1"

RECORDS: list[dict] = [
    {"event": "trigger dag/run/t0/1/1 (ID 1) starting", "ti_id": "01a2", "try_number": 1, "map_index": 1,
     "dag_id": "dag", "run_id": "run", "task_id": "t0", "filename": "triggerer_job_runner.py", "lineno": 1591},
    {"event": "Trigger fired event", "name": "dag/run/t0/1/1 (ID 1)",
     "result": "TriggerEvent<{'due': '2026-12-01T18:58:04+00:00', 'series': 'burst'}>", "lineno": 1629},
    {"event": f"connecting with {SECRET} and token {JWT}", "password": "plain", "api_key": 12345,
     "Access-Token ": "x", "extra": {"conn": {"login": "u", "passwd": "p", "deep": [{"secret": "s", "ok": SECRET}]}},
     "items": [SECRET, 1, None, True, 2.5, {"authorization": "Bearer y"}], "note": "no token here"},
    {"event": "deep", "a": {"b": {"c": {"d": {"e": {"f": {"g": SECRET, "private_key": "k"}}}}}}},
    {"event": "jwt only", "header": JWT, "also": f"prefix {JWT} suffix", "numbers": [JWT]},
    {"event": "unicode é ☃ and " + SECRET, "colour": "blue", "Colour": {"shade": "navy"}},
    {"event": "a warning", "level": "warning", "error_detail": [{"exc_type": "ValueError", "exc_value": SECRET}]},
]


def _lines(trigger_id: int) -> list[bytes]:
    out = []
    for i, rec in enumerate(RECORDS):
        rec = {"timestamp": f"2026-12-01T19:00:00.{i:06d}Z", "level": "info", **rec, "trigger_id": trigger_id}
        out.append(msgspec.json.encode(rec))
    return out


@pytest.fixture
def masker():
    base = masker_module._secrets_masker()
    saved = (list(base.sensitive_variables_fields), base.hide_sensitive_var_conn_fields, set(base.patterns),
             base.replacer)
    if not base.sensitive_variables_fields:
        base.sensitive_variables_fields = ["password", "secret", "passwd", "authorization", "api_key", "apikey",
                                           "access_token", "private_key"]
    base.add_mask(SECRET)
    yield base
    base.sensitive_variables_fields, base.hide_sensitive_var_conn_fields, base.patterns, base.replacer = saved


def test_the_cheaper_chain_writes_stocks_bytes(tmp_path: Path, monkeypatch, masker) -> None:
    monkeypatch.setenv("AIRFLOW__LOGGING__BASE_LOG_FOLDER", str(tmp_path))
    stock_path, fast_path = "stock.log", "fast.log"
    pool = LogFiles(max_open=4)
    cache = {1: TriggerLoggingFactory(log_path=stock_path, ti=None),
             2: PooledLogFactory(log_path=fast_path, ti=None, pool=pool)}
    consumer = TriggerRunnerSupervisor._process_log_messages_from_subprocess(types.SimpleNamespace(logger_cache=cache))
    next(consumer)

    def feed() -> None:
        for stock_line, fast_line in zip(_lines(1), _lines(2)):
            consumer.send(stock_line)
            consumer.send(fast_line)

    feed()
    masker.sensitive_variables_fields = [*masker.sensitive_variables_fields, "colour"]  # a new list: forgotten
    feed()
    masker.sensitive_variables_fields.append("shade")  # the same list, grown: forgotten too
    feed()
    fields = masker.sensitive_variables_fields
    fields[fields.index("colour")] = "hue"  # the same list, the same length, edited: forgotten too
    feed()
    masker.hide_sensitive_var_conn_fields = False
    feed()
    cache[1]._filehandle.flush()
    pool.close_all()
    stock = (tmp_path / stock_path).read_bytes()
    fast = (tmp_path / fast_path).read_bytes()
    assert fast == stock
    lines = [json.loads(line) for line in stock.splitlines()]
    assert len(lines) == 5 * len(RECORDS)
    # The records did exercise both steps: something was masked by key, by secret and as a JWT.
    assert lines[2]["event"] == "connecting with *** and token eyJ***" and lines[2]["password"] == "***"
    assert lines[2]["extra"]["conn"]["deep"] == [{"secret": "***", "ok": "***"}]
    assert lines[3]["a"]["b"]["c"]["d"]["e"]["f"] == {"g": SECRET, "private_key": "***"}  # stock's depth limit
    assert lines[len(RECORDS) + 5]["colour"] == "***" and lines[5]["colour"] == "blue"
    assert lines[3 * len(RECORDS) + 5]["colour"] == "blue"  # the in-place edit was seen
    assert lines[4 * len(RECORDS) + 2]["password"] == "plain"  # key names not hidden once switched off


def test_faster_swaps_only_the_two_steps() -> None:
    from airflow.sdk._shared.logging.structlog import redact_jwt as stock_redact_jwt
    from airflow.sdk.log import logging_processors

    stock = logging_processors(json_output=True)
    fast = faster(stock)
    assert mask_logs in stock and stock_redact_jwt in stock
    assert len(fast) == len(stock)
    swapped = [(s, f) for s, f in zip(stock, fast) if s is not f]
    assert [s for s, _ in swapped] == [p for p in stock if p in (mask_logs, stock_redact_jwt)]
    assert {type(f) for _, f in swapped} == {FastMaskLogs, type(redact_jwt)}


def test_the_view_shares_the_maskers_state_and_keeps_its_memo_apart(masker) -> None:
    view = FastMaskLogs()._masker()
    assert view.__dict__ is masker.__dict__
    assert view.should_hide_value_for_key("PassWord") is masker.should_hide_value_for_key("PassWord") is True
    assert "_memo" not in masker.__dict__
    masker.add_mask("another-secret-added-later")
    assert view.redact("x another-secret-added-later y") == "x *** y"


def test_a_subclassed_process_masker_is_used_as_stock_uses_it(masker, monkeypatch) -> None:
    """A plugin's ``SecretsMasker`` subclass keeps its own code: the memo view is not used."""
    class Loud(masker_module.SecretsMasker):
        def redact(self, item, name=None, max_depth=None, replacement="***"):  # type: ignore[override]
            return "redacted by the plugin"

    monkeypatch.setattr(masker_module, "_secrets_masker", lambda: Loud())
    assert FastMaskLogs()(None, "info", {"event": "x"}) == "redacted by the plugin"


class _Colour(enum.Enum):
    RED = "red-" + SECRET


class _Level(enum.IntEnum):
    HIGH = 3


class _Thing:
    def __repr__(self) -> str:
        return f"thing {SECRET}"


def _nested(depth: int, leaf: object, kind: type = dict) -> object:
    for i in range(depth):
        leaf = {f"k{i}": leaf, "password": [i]} if kind is dict else [leaf, SECRET]
    return leaf


#: Records the walk takes (JSON values) and ones it hands to stock's walk (anything else in them).
ODD_RECORDS: list[dict] = [
    {"event": "lists", "a": [[SECRET, [SECRET, [SECRET, [SECRET, [SECRET, [SECRET, [SECRET]]]]]]]],
     "b": [{"secret": [1, {"x": SECRET}]}, {"": SECRET}], "passwords": {"inner": [SECRET, {"k": 1}]}},
    {"event": "leaves", "f": 2.5, "t": True, "n": None, "i": -1, "s": "", "": "empty key", "api_key": None},
    {"event": "deep dicts", "d": _nested(100, SECRET)},
    {"event": "deep lists", "l": _nested(100, SECRET, list)},
    {"event": "a tuple", "t": (SECRET, {"password": "p"}), "s": {SECRET}},
    {"event": "enums", "c": _Colour.RED, "lvl": _Level.HIGH, "nested": [{"c": _Colour.RED}]},
    {"event": "an object", "o": _Thing(), "secret": _Thing()},
    {"event": "a non-string key", 1: SECRET, "ok": SECRET},
]


@pytest.mark.parametrize("record", RECORDS + ODD_RECORDS, ids=lambda r: str(r["event"])[:20])
def test_the_walk_redacts_as_stocks_walk(masker, record: dict) -> None:
    """``FastMaskLogs`` on any record (also ones no JSON line decodes to) equals stock ``mask_logs``."""
    assert FastMaskLogs()(None, "info", dict(record)) == mask_logs(None, "info", dict(record))


def test_the_walk_follows_stocks_settings_and_secrets(masker) -> None:
    fast = FastMaskLogs()
    record = {"event": "x", "colour": "blue", "note": "later-secret", "list": ["later-secret"]}
    assert fast(None, "info", dict(record)) == mask_logs(None, "info", dict(record)) == record
    masker.add_mask("later-secret")
    masker.sensitive_variables_fields = [*masker.sensitive_variables_fields, "colour"]
    assert fast(None, "info", dict(record)) == mask_logs(None, "info", dict(record)) != record
    masker.hide_sensitive_var_conn_fields = False
    assert fast(None, "info", dict(record)) == mask_logs(None, "info", dict(record))


def test_a_failing_walk_is_stocks_failure(masker, monkeypatch) -> None:
    """An error inside the walk: stock's walk runs instead, with stock's "<redaction-failed>"."""
    def boom(self, item, depth, max_depth=5, *, replacement="***"):  # type: ignore[no-untyped-def]
        raise ValueError("no")

    monkeypatch.setattr(masker_module.SecretsMasker, "_redact_all", boom)
    record = {"event": "x", "password": "p", "ok": SECRET}
    assert FastMaskLogs()(None, "info", dict(record)) == mask_logs(None, "info", dict(record))
    assert mask_logs(None, "info", dict(record))["password"] == "<redaction-failed>"
