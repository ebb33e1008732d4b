"""The supervisor answers every request Airflow's trigger runner can send.

Airflow 3.3.2 declares what a triggerer's runner may send its supervisor as one discriminated
union, ``airflow.jobs.triggerer_job_runner.ToTriggerSupervisor``. Every member must have an owner
here: ``requests.HANDLERS`` for the SDK requests, ``LoopSlot`` for the check-in
(``TriggerStateChanges``). An Airflow upgrade that adds a request type fails this test instead of
leaving trigger code hanging on an unanswered request.
"""

from __future__ import annotations

import types
import typing

from airflow.jobs.triggerer_job_runner import ToTriggerSupervisor, messages
from multitrigger.supervisor.requests import HANDLERS


def _members(tp: object) -> set[type]:
    """The classes of a (possibly ``Annotated``, possibly nested) union."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _members(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_members(arg) for arg in typing.get_args(tp)))
    assert isinstance(tp, type), tp
    return {tp}


def test_every_request_type_of_airflow_has_one_owner():
    sent_by_airflow = _members(ToTriggerSupervisor)
    assert messages.TriggerStateChanges in sent_by_airflow and len(sent_by_airflow) > 20  # really introspected
    owned = set(HANDLERS) | {messages.TriggerStateChanges}  # the check-in is LoopSlot's
    assert sent_by_airflow - owned == set(), "request types Airflow sends that nothing answers"
    assert owned - sent_by_airflow == set(), "handlers for types Airflow no longer sends"
    assert messages.TriggerStateChanges not in HANDLERS  # one owner: LoopSlot, not the handler table
    assert all(callable(handler) for handler in HANDLERS.values())


def test_team_clients_are_made_once_and_share_one_in_process_api():
    from multitrigger.supervisor.requests import api_client
    from multitrigger.supervisor.teams import TEAM_HEADER

    a, b, none = api_client("team_a"), api_client("team_b"), api_client(None)
    assert api_client("team_a") is a and api_client(None) is none  # not rebuilt per request
    assert a._transport is b._transport is none._transport  # one app, DAG bag and loop thread for all teams
    assert (a.headers[TEAM_HEADER], b.headers[TEAM_HEADER], TEAM_HEADER in none.headers) == ("team_a", "team_b", False)
