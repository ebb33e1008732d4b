"""
The supervisor's in-process Execution API: Airflow's FastAPI app, which answers the loops' requests
(``multitrigger.supervisor.requests``), built on the first request that needs it.

Why a module of its own: importing FastAPI, Airflow's Execution API routes and their token code
costs the supervisor ~8 MB and ~0.4 s of CPU at start (measured, Airflow 3.3.2), and building the
app ~13 MB and ~1 s more; a supervisor whose triggers never ask for a connection, variable or XCom
pays for neither. ``requests.api_client`` imports this module on its first call (on the request
lane), never at start.

Checked against Airflow 3.3.2: ``in_process_api_server`` is the stock triggerer's;
``get_team_name_dep`` is the dependency its connection and variable routes resolve the team with.
"""

from __future__ import annotations

import functools

from fastapi import Request

from airflow.api_fastapi.execution_api.app import InProcessExecutionAPI
from airflow.api_fastapi.execution_api.security import get_team_name_dep
from airflow.configuration import conf
from airflow.jobs.triggerer_job_runner import in_process_api_server
from multitrigger.supervisor.teams import TEAM_HEADER


async def team_from_header(request: Request) -> str | None:
    """``get_team_name_dep`` for the supervisor's in-process API: the team our client sent
    (``multitrigger.supervisor.teams``)."""
    if not conf.getboolean("core", "multi_team"):
        return None
    return request.headers.get(TEAM_HEADER) or None


@functools.cache
def server() -> InProcessExecutionAPI:
    """One in-process Execution API for every team (each one is a FastAPI app, a DAG bag and an
    event-loop thread): the team travels per request, in a header of the team's client."""
    api = in_process_api_server()
    api.app.dependency_overrides[get_team_name_dep] = team_from_header
    return api
