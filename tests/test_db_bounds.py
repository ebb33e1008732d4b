"""The DB wait bounds (``multitrigger.supervisor.db_bounds``) against this machine's real PostgreSQL.

What cannot be shown here: ``tcp_user_timeout`` and keepalives need a path that really drops
packets, which loopback without a firewall cannot make (``iptables`` is not installed); the
end-to-end partition test (``test_db_partition``) covers a black hole at the application level.
"""

from __future__ import annotations

import socket
import time

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from multitrigger.supervisor.db_bounds import bound_engine, connect_params
from tests.conftest import PG_SERVER_URL


def test_a_statement_past_the_bound_fails_fast_and_the_operators_settings_win() -> None:
    engine = create_engine(PG_SERVER_URL, connect_args={"application_name": "bounds-test"})
    bounds = bound_engine(engine, timeout=1.0)
    assert bounds["tcp_user_timeout"] == 1000 and bounds["keepalives"] == 1
    with engine.connect() as conn:
        assert conn.execute(text("SHOW statement_timeout")).scalar() == "1s"
        assert conn.execute(text("SHOW lock_timeout")).scalar() == "1s"
        assert conn.execute(text("SHOW application_name")).scalar() == "bounds-test"
        t0 = time.monotonic()
        with pytest.raises(OperationalError, match="statement timeout"):
            conn.execute(text("SELECT pg_sleep(30)"))
        assert time.monotonic() - t0 < 5
    engine.dispose()

    # An operator's own statement_timeout in [database] sql_alchemy_connect_args is kept.
    own = create_engine(PG_SERVER_URL, connect_args={"options": "-c statement_timeout=7000"})
    bound_engine(own, timeout=1.0)
    with own.connect() as conn:
        assert conn.execute(text("SHOW statement_timeout")).scalar() == "7s"
        assert conn.execute(text("SHOW lock_timeout")).scalar() == "1s"
    own.dispose()


def test_a_server_that_never_answers_fails_the_connect_within_the_bound() -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts (the kernel does), never speaks
    port = silent.getsockname()[1]
    engine = create_engine(f"postgresql+psycopg2://postgres@127.0.0.1:{port}/test")
    bound_engine(engine, timeout=2.0)
    t0 = time.monotonic()
    with pytest.raises(OperationalError, match="timeout"):
        engine.connect()
    assert time.monotonic() - t0 < 6
    silent.close()


def test_bounds_per_driver() -> None:
    assert connect_params("mysql", "mysqldb", 5) == {"connect_timeout": 5, "read_timeout": 5, "write_timeout": 5}
    assert connect_params("sqlite", "pysqlite", 5) == {"timeout": 5.0}
    assert connect_params("postgresql", "asyncpg", 5) == {"timeout": 5, "command_timeout": 5}
