"""
Answers to what a loop asks of the supervisor: connections, variables, XComs, TI/DR state, …

Checked against Airflow 3.3.2: the handlers are Airflow's own
(``airflow.sdk.execution_time.request_handlers``), called through the same in-process Execution
API client the stock ``TriggerRunnerSupervisor`` uses, so a trigger sees what it would see under
``airflow triggerer`` — except that with ``[core] multi_team`` connections and variables resolve for
the loop's team (``multitrigger.supervisor.teams``) instead of for no team. The dispatch is a table keyed by message type, not an if/elif chain.

``TriggerStateChanges`` (the loop's check-in) is not answered here: it belongs to ``LoopSlot``.
Every handler but those in ``LOCAL`` may touch the metadata DB, so they run on the supervisor's
request lane (``multitrigger.supervisor.request_desk``), never on the selector thread.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import structlog
from pydantic import BaseModel

from airflow.configuration import conf
from airflow.jobs.triggerer_job_runner import HITLDetailResponseResult
from airflow.sdk.api.client import Client, ServerResponseError
from airflow.sdk.exceptions import ErrorType
from airflow.sdk.execution_time import comms as c
from airflow.sdk.execution_time import request_handlers as h
from multitrigger.supervisor.teams import TEAM_HEADER, refusal

log = structlog.get_logger(__name__)

Response = tuple[BaseModel | None, dict[str, bool]]
Handler = Callable[[Client, Any], Response]


def _ok(fn: Callable[[Client, Any], object]) -> Handler:
    """Wrap a handler that returns nothing; the loop expects an ``OKResponse``."""

    @functools.wraps(fn)
    def wrapper(client: Client, msg: Any) -> Response:
        fn(client, msg)
        return c.OKResponse(ok=True), {}

    return wrapper


def _no_reply(msg: c.MaskSecret) -> Response:
    h.handle_mask_secret(msg)
    return None, {}


def _hitl_update(client: Client, msg: c.UpdateHITLDetail) -> Response:
    resp = client.hitl.update_response(
        ti_id=msg.ti_id, chosen_options=msg.chosen_options, params_input=msg.params_input
    )
    return HITLDetailResponseResult.from_api_response(response=resp), {}


def _hitl_get(client: Client, msg: c.GetHITLDetailResponse) -> Response:
    return HITLDetailResponseResult.from_api_response(response=client.hitl.get_detail_response(ti_id=msg.ti_id)), {}


HANDLERS: dict[type, Handler] = {
    c.GetConnection: h.handle_get_connection,
    c.GetVariable: h.handle_get_variable,
    c.GetVariableKeys: h.handle_get_variable_keys,
    c.PutVariable: h.handle_put_variable,
    c.DeleteVariable: h.handle_delete_variable,
    c.GetXCom: h.handle_get_xcom,
    c.SetXCom: h.handle_set_xcom,
    c.DeleteXCom: h.handle_delete_xcom,
    c.GetDRCount: h.handle_get_dr_count,
    c.GetDagRunState: h.handle_get_dag_run_state,
    c.GetTICount: h.handle_get_ti_count,
    c.GetTaskStates: h.handle_get_task_states,
    c.GetPreviousTI: h.handle_get_previous_ti,
    c.UpdateHITLDetail: _hitl_update,
    c.GetHITLDetailResponse: _hitl_get,
    c.MaskSecret: lambda _client, msg: _no_reply(msg),
    c.GetAssetStateStoreByName: h.handle_get_asset_state_store_by_name,
    c.GetAssetStateStoreByUri: h.handle_get_asset_state_store_by_uri,
    c.SetAssetStateStoreByName: _ok(h.handle_set_asset_state_store_by_name),
    c.SetAssetStateStoreByUri: _ok(h.handle_set_asset_state_store_by_uri),
    c.ClearAssetStateStoreByName: _ok(h.handle_clear_asset_state_store_by_name),
    c.ClearAssetStateStoreByUri: _ok(h.handle_clear_asset_state_store_by_uri),
    c.DeleteAssetStateStoreByName: _ok(h.handle_delete_asset_state_store_by_name),
    c.DeleteAssetStateStoreByUri: _ok(h.handle_delete_asset_state_store_by_uri),
}


#: Answered on the selector thread: they need no database.
LOCAL: frozenset[type] = frozenset({c.MaskSecret})


@functools.lru_cache(maxsize=256)  # teams are few; a client is cheap, so an evicted one is just made again
def api_client(team: str | None = None) -> Client:
    """The stock triggerer's client (in-process Execution API, no HTTP, no token), one per team,
    all on one server (``api_server``, imported here: not at start): the team rides in a header that
    ``api_server.team_from_header`` hands to Airflow's routes.
    Called on the request lane only (one thread), so the caches are never filled twice at once."""
    from multitrigger.supervisor import api_server

    client = Client(base_url=None, token="", dry_run=True, transport=api_server.server().transport)
    client.base_url = "http://in-process.invalid./"  # type: ignore[assignment]
    if team is not None:
        client.headers[TEAM_HEADER] = team
    return client


#: A "not found" answer for these may be another team's entry: ``teams.refusal`` tells.
_SCOPED = {c.GetConnection: ("connection", "conn_id", ErrorType.CONNECTION_NOT_FOUND),
           c.GetVariable: ("variable", "key", ErrorType.VARIABLE_NOT_FOUND)}


def answer(msg: BaseModel, team: str | None = None) -> tuple[dict | None, dict | None]:
    """Run the handler for ``msg`` as *team* (``teams.LoopTeams``); return the response frame's ``(body, error)``."""
    handler = HANDLERS.get(type(msg))
    if handler is None:
        return None, _error(ErrorType.GENERIC_ERROR, f"multitrigger does not answer {type(msg).__name__}")
    try:
        resp, dump_opts = handler(api_client(team), msg)
        if type(msg) in _SCOPED and isinstance(resp, c.ErrorResponse):
            kind, field, not_found = _SCOPED[type(msg)]
            if resp.error == not_found and conf.getboolean("core", "multi_team"):
                if reason := refusal(kind, getattr(msg, field), team):
                    log.error("secret refused", kind=kind, key=getattr(msg, field), team=team)
                    # As the body, like the not-found answer it replaces: the SDK (1.3.2) raises
                    # AirflowSecretsBackendAccessDenied for it and falls through to no other backend.
                    # As a frame *error* it would be swallowed and reported as "isn't defined".
                    return _error(ErrorType.PERMISSION_DENIED, reason), None
    except ServerResponseError as err:
        detail = err.response.json() if err.response is not None else None
        log.error("API server error", message=str(err), detail=detail)
        return None, _error(ErrorType.API_SERVER_ERROR, str(err), detail=detail)
    except Exception as err:
        log.exception("Unhandled exception while answering a loop request", request=type(msg).__name__)
        return None, _error(ErrorType.API_SERVER_ERROR, str(err), exception_type=type(err).__name__)
    return (resp.model_dump(**dump_opts) if resp is not None else None), None


def unreachable(seconds: float) -> dict:
    """The error a loop gets for a request the metadata DB did not answer within the bound."""
    return _error(ErrorType.API_SERVER_ERROR,
                  f"metadata DB unreachable: the triggerer got no answer within {seconds:g}s; try again later")


def _error(kind: ErrorType, message: str, **detail: Any) -> dict:
    return c.ErrorResponse(error=kind, detail={"message": message, **detail}).model_dump()
