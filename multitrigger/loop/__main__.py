"""
Entry point of a loop process: ``<interpreter> -m multitrigger.loop`` (exec'd, never just forked).

Checked against Airflow 3.3.2. The supervisor hands the loop:

* fd 0: the request socket (Airflow comms framing, see ``multitrigger.protocol``);
* fd 1 and 2: a socket for anything user code prints;
* ``MULTITRIGGER_LOG_FD``: a socket for JSON log lines (routed to per-trigger log files);
* ``AIRFLOW_HOME``: a private directory with no ``airflow.cfg``; no database URL, no Fernet key;
* ``MULTITRIGGER_LOOP_USER``: the Unix user to become first (``multitrigger.loop.privileges``);
* ``MULTITRIGGER_SYS_PATH``: where to find trigger code (``multitrigger.loop.sys_path``), applied
  first, before Airflow or any user code is imported (a forked loop replaces its zygote's entries).

Set-up order matters and mirrors ``airflow.sdk.execution_time.supervisor._fork_main``: reset
signals, send logs over the JSON channel, block ORM access, then run the trigger runner. A loop
forked from a zygote (``prepared``) finds the last two done: the zygote did them once before forking
(``multitrigger.loop.zygote.prepare_loop``) and put this loop's log socket on the channel's fd.
"""

from __future__ import annotations

import os
import sys

from multitrigger.unused_imports import skip_unused_imports

skip_unused_imports()  # before the imports below pull in structlog and httpx (multitrigger.unused_imports)

from multitrigger.loop import privileges, sys_path  # noqa: E402
from multitrigger.protocol import ENV_LOG_FD  # noqa: E402


def setup(log_fd: int, reset_signals: bool = True) -> None:
    """Stock's child set-up (see the module docstring): signals, JSON log channel, no ORM."""
    from airflow.sdk.execution_time.supervisor import (
        _configure_logs_over_json_channel,
        _reset_signals,
        block_orm_access,
    )

    if reset_signals:
        _reset_signals()
    _configure_logs_over_json_channel(log_fd)
    block_orm_access()


def main(prepared: bool = False) -> None:
    """Run the loop; ``prepared``: forked from a zygote that ran ``setup`` (all but the signals)."""
    privileges.drop()  # MULTITRIGGER_LOOP_USER: become the loop's user before anything else runs
    sys_path.apply()
    if prepared:
        from airflow.sdk.execution_time.supervisor import _reset_signals

        _reset_signals()
    else:
        setup(int(os.environ[ENV_LOG_FD]))

    from multitrigger.loop.runner import LoopRunner

    try:
        LoopRunner().run()
    except SystemExit:
        raise
    except BaseException:
        import traceback

        traceback.print_exc(file=sys.stderr)
        sys.stderr.flush()
        os._exit(1)
    os._exit(0)


if __name__ == "__main__":
    main()
