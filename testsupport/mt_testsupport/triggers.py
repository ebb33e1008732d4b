"""Test triggers (real ``BaseTrigger`` subclasses, no mocks), beside the demo's own
(:mod:`multitrigger.demo.triggers`).

Each serializes to ``("mt_testsupport.triggers.<Name>", kwargs)``: a loop re-hydrates it by
importing this package, which is installed (editable) into the project venv, so every loop sees
it -- the supervisor's interpreter and layered bundle venvs alike, whatever a loop's
``python_path``. Events carry ``pid`` / ``executable`` / ``loop``.

Importing this module imports Airflow (3.3.2).  Test code that only needs a class path uses the
constants of :mod:`mt_testsupport.home`.
"""

from __future__ import annotations

import asyncio
import importlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from airflow.triggers.base import BaseEventTrigger, BaseTrigger, TriggerEvent

from multitrigger.demo import triggers as demo
from multitrigger.demo.triggers import classpath, process_info


class FireAtTrigger(demo.FireAtTrigger):
    """The demo's :class:`~multitrigger.demo.triggers.FireAtTrigger`, plus ``record_path``: it
    appends ``start <pid> <loop>`` when it starts running and ``fire <pid> <loop>`` when it fires,
    so tests can prove a trigger ran (and fired) exactly once. With ``record_tag`` every line ends
    with the tag (many triggers sharing one file), and ``cancel <pid> <loop>`` is appended when the
    trigger is cancelled (a triggerer stopping or handing it back). With ``gate`` (a file path) it
    fires at ``moment`` or once the file exists, whichever is later: a test opens the gate when its
    scenario is ready instead of guessing a due time long enough for a loaded machine."""

    def __init__(self, moment: str, payload: dict[str, Any] | None = None, record_path: str | None = None,
                 record_tag: str | None = None, gate: str | None = None, **kwargs: Any) -> None:
        super().__init__(moment, payload, **kwargs)
        self.record_path = record_path
        self.record_tag = record_tag
        self.gate = gate

    def serialize(self) -> tuple[str, dict[str, Any]]:
        path, kwargs = super().serialize()
        for key in ("record_path", "record_tag", "gate"):
            if getattr(self, key):
                kwargs[key] = getattr(self, key)
        return path, kwargs

    def _record(self, what: str) -> None:
        """One ``O_APPEND`` write of the whole line (as the text file's one flush at close wrote it),
        without a text file object: ~1.3 us instead of ~6 (quiet machine). Benchmarks record every
        start and fire of thousands of triggers in both triggerers; the record is the instrument,
        not the workload."""
        if self.record_path:
            info = process_info()
            tag = f" {self.record_tag}" if self.record_tag else ""
            fd = os.open(self.record_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                os.write(fd, f"{what} {info['pid']} {info['loop']}{tag}\n".encode())
            finally:
                os.close(fd)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        self._record("start")
        try:
            while self.gate and not os.path.exists(self.gate):
                await asyncio.sleep(0.05)
            async for event in super().run():
                self._record("fire")
                yield event
        except asyncio.CancelledError:
            if self.record_tag:
                self._record("cancel")
            raise


class FireAtEventTrigger(demo.FireAtTrigger, BaseEventTrigger):
    """Asset-watcher flavour of :class:`FireAtTrigger`: fires once at ``moment``, then waits forever.

    (An asset trigger that *returned* would be restarted by the triggerer and fire again at once.)
    Every (re)start after ``moment`` fires immediately once more.
    """

    async def run(self) -> AsyncIterator[TriggerEvent]:
        async for event in super().run():
            yield event
        await asyncio.Event().wait()


class WaitForeverTrigger(BaseTrigger):
    """Never fire.  ``on_kill()`` appends a line ``on_kill`` to ``marker_path``, ``cleanup()`` a line ``cleanup``.

    ``on_kill`` only runs when a user acts on the task (clear / mark failed / mark success);
    ``cleanup`` runs on every exit of the trigger (including triggerer shutdown).
    """

    def __init__(self, marker_path: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.marker_path = str(marker_path)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return classpath(self), {"marker_path": self.marker_path}

    def _mark(self, word: str) -> None:
        path = Path(self.marker_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as fh:
            fh.write(word + "\n")

    async def run(self) -> AsyncIterator[TriggerEvent]:
        await asyncio.Event().wait()
        yield TriggerEvent(None)  # pragma: no cover - unreachable

    async def on_kill(self) -> None:
        self._mark("on_kill")

    async def cleanup(self) -> None:
        self._mark("cleanup")


class ImportVersionTrigger(BaseTrigger):
    """Import ``module`` inside ``run()`` and fire with its ``__version__`` (tests per-loop environments)."""

    def __init__(self, module: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.module = module

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return classpath(self), {"module": self.module}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        mod = importlib.import_module(self.module)
        yield TriggerEvent(
            {
                "module": self.module,
                "version": getattr(mod, "__version__", None),
                "file": getattr(mod, "__file__", None),
                **process_info(),
            }
        )


class SdkCallsTrigger(BaseTrigger):
    """Calls the Task SDK from trigger code, sync and async, and fires with what it got back.

    Sync calls from ``async def run()`` go through greenback (stock ``TriggerRunner`` semantics);
    every answer comes from the supervisor over the loop's socket — the loop has no DB access.
    """

    def __init__(self, conn_id: str, variable: str, dag_id: str, run_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conn_id, self.variable, self.dag_id, self.run_id = conn_id, variable, dag_id, run_id

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return classpath(self), {
            "conn_id": self.conn_id, "variable": self.variable, "dag_id": self.dag_id, "run_id": self.run_id,
        }

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow.sdk import BaseHook, Variable
        from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

        sync_conn = BaseHook.get_connection(self.conn_id)  # sync SDK call from async code
        async_conn = await BaseHook.aget_connection(self.conn_id)
        yield TriggerEvent({
            "sync_host": sync_conn.host,
            "async_host": async_conn.host,
            "variable": Variable.get(self.variable),
            "dag_run_state": RuntimeTaskInstance.get_dagrun_state(self.dag_id, self.run_id),
            "env_secret_names": sorted(k for k in os.environ if k.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_"))),
            **process_info(),
        })


class SecretsTrigger(BaseTrigger):
    """Fetches connections and variables through the supervisor and fires with what it got (hosts
    and values); the first one it may not have raises, which fails its task."""

    def __init__(self, conn_ids: list[str], var_keys: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conn_ids, self.var_keys = list(conn_ids), list(var_keys)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return classpath(self), {"conn_ids": self.conn_ids, "var_keys": self.var_keys}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow.sdk import BaseHook, Variable

        conns = {c: BaseHook.get_connection(c).host for c in self.conn_ids}  # sync SDK calls from async code
        variables = {k: Variable.get(k) for k in self.var_keys}
        yield TriggerEvent({"conns": conns, "vars": variables, **process_info()})


class WhoAmITrigger(BaseTrigger):
    """Fires with who it runs as and what it could open: ``paths`` read (``"ok"`` or the error's
    type name), a file written into its own ``AIRFLOW_HOME``; logs one line to its trigger log."""

    def __init__(self, paths: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.paths = list(paths)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return classpath(self), {"paths": self.paths}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        self.log.info("whoami uid=%s gid=%s", os.getuid(), os.getgid())
        opened = {}
        for path in self.paths:
            try:
                (os.listdir if os.path.isdir(path) else (lambda p: open(p).read()))(path)
                opened[path] = "ok"
            except OSError as err:
                opened[path] = type(err).__name__
        own = Path(os.environ["AIRFLOW_HOME"]) / "whoami.txt"
        own.write_text("mine\n")
        yield TriggerEvent({"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(), "opened": opened,
                            "wrote": str(own), **process_info()})
