"""
Start every loop interpreter's zygote before the supervisor imports Airflow.

Why: ``multitrigger run`` spends ~3-4 s importing Airflow before it can compute a loop's
environment (``launch.loop_env`` needs Airflow's configuration), and a zygote then spends another
~3.5 s importing what a loop imports. In series that put start-up ~3 s behind stock ``airflow
triggerer`` (which forks its runner from its own warm process — no trust boundary between them).

So ``cli.main`` calls ``prestart`` first, with only the TOML config read: each zygote is exec'd
with ``launch.early_loop_env`` (no ``AIRFLOW__*`` setting at all, so no secret), imports the
third-party part of a loop's imports while the supervisor imports Airflow, and waits. The
supervisor's ``ZygotePool`` later adopts it (``take_prestarted``) and sends the real loop
environment (``Zygote.configure``) before the zygote imports any Airflow module, so loops see
exactly what an unstaged zygote would give them.

And as soon as Airflow is imported (``cli.main``, after its parser: ``configure_prestarted``), before
the rest of the supervisor's start (its own modules, the job row, the ``Supervisor``), each zygote
is sent its loop environment, computed as the pool computes it (``zygote_env``): the zygote then
imports Airflow while the supervisor finishes starting, instead of after (measured: the zygote was
configured ~3.5 s after launch, of a ~5 s start-up). The pool adopts such a zygote only if the
environment it got is exactly the one the pool would send (``ZygotePool._adopt``).

Best effort: any problem here (bad config, bad interpreter) is left for the normal start-up path
to report, and a zygote nobody adopts exits when this process does (its control socket closes;
``PR_SET_PDEATHSIG`` as well). Not with ``--daemon``: daemonizing forks, and the parent's exit would
kill the zygotes.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from multitrigger.config import Config
from multitrigger.paths import default_config_path, state_dir
from multitrigger.supervisor.launch import early_loop_env
from multitrigger.supervisor.zygote_client import Zygote
from multitrigger.supervisor.zygote_pool import zygote_home, zygote_interpreters

#: Staged zygotes started by ``prestart``, until the supervisor's pool takes them.
_PRESTARTED: dict[Path, Zygote] = {}
log = structlog.get_logger(__name__)
_HOMES: dict[Path, Path] = {}  # interpreter → its zygote's home (``zygote_home``)


if TYPE_CHECKING:
    from multitrigger.supervisor.trigger_path import TriggerPaths

def prestart(config: Config, state: Path) -> None:
    """Start a staged zygote per distinct loop interpreter (see the module docstring)."""
    for python in zygote_interpreters(config):
        if python in _PRESTARTED:
            continue
        home = zygote_home(state, python)
        try:
            _PRESTARTED[python] = Zygote.start(python, early_loop_env(home), home, staged=True)
            _HOMES[python] = home
        except OSError:
            pass  # the supervisor starts it the normal way and reports the error


def zygote_env(home: Path, paths: TriggerPaths | None = None) -> dict[str, str]:
    """A zygote's loop environment, the one formula for the pool (``Supervisor`` passes its
    ``paths``) and for prestarted zygotes (``paths`` computed here): ``launch.loop_env`` plus the
    supervisor-wide trigger-code entries (``TriggerPaths.zygote_env``). The pool adopts a prestarted
    zygote only if the two are equal. Imports Airflow."""
    from multitrigger.supervisor.launch import loop_env
    from multitrigger.supervisor.trigger_path import TriggerPaths, inherited_entries

    paths = TriggerPaths(tuple(inherited_entries()), {}) if paths is None else paths
    return loop_env(home) | paths.zygote_env()


def configure_prestarted() -> None:
    """Send each prestarted zygote still waiting its loop environment (see the module docstring).

    Providers' configuration is loaded first, as ``entry.run_triggerer`` does before the pool
    computes the same environment. A zygote that cannot take it stays waiting: the pool tries again.
    """
    from airflow.providers_manager import ProvidersManager

    from multitrigger.supervisor.zygote_client import ZygoteError

    if not any(z.awaiting_env for z in _PRESTARTED.values()):
        return
    try:
        ProvidersManager().initialize_providers_configuration()
        envs = {python: zygote_env(_HOMES[python]) for python, z in _PRESTARTED.items() if z.alive and z.awaiting_env}
    except Exception:  # best effort: the pool computes and sends it again, with its own errors
        log.debug("prestarted zygotes left waiting", exc_info=True)
        return
    for python, zygote in _PRESTARTED.items():
        if python in envs:
            try:
                zygote.configure(envs[python])
            except ZygoteError:
                pass


def take_prestarted() -> dict[Path, Zygote]:
    """Hand every prestarted zygote over (to ``ZygotePool.start``, which adopts or closes each)."""
    taken = dict(_PRESTARTED)
    _PRESTARTED.clear()
    return taken


def prestart_for_argv(argv: list[str]) -> None:
    """``multitrigger run`` arguments → ``prestart``; silent on anything the real parser rejects."""
    from multitrigger.config import ConfigError, load_config

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("-D", "--daemon", action="store_true")
    parser.add_argument("--bundles", type=lambda v: [b for b in v.split(",") if b], action="extend", default=None)
    try:
        args, _rest = parser.parse_known_args(argv)
    except SystemExit:
        return
    if args.daemon or "-h" in argv or "--help" in argv:
        return
    path = args.config if args.config is not None else default_config_path()
    try:
        config = load_config(path, must_exist=args.config is not None)
    except (ConfigError, OSError):
        return
    from multitrigger.scope import Scope, served_config

    prestart(served_config(config, Scope.of(config, args.bundles)), state_dir())  # only loops run here
