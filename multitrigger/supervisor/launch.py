"""
How a loop process is started: its environment (the trust boundary). Its argv is
``multitrigger.interpreter_probe.loop_bootstrap_args``, shared with ``config check``'s handshake.

A loop runs user code, so its environment carries no metadata-database URL, no Fernet key and no
other secret from the supervisor's configuration: every ``AIRFLOW__<SECTION>__<KEY>`` variable that
Airflow marks sensitive (and all of ``[database]``) is dropped, with its ``_CMD``/``_SECRET``
variants, and so is every ``AIRFLOW_CONN_*``/``AIRFLOW_VAR_*`` (the environment secrets backend:
other teams' connections; trigger code asks the supervisor for them). Its ``AIRFLOW_HOME`` is a private directory with no ``airflow.cfg``. Non-secret
``[triggerer]`` and ``[logging]`` settings are passed explicitly so trigger semantics (timeouts,
``on_kill_timeout``, blocked-loop threshold) match the supervisor's configuration.

``PYTHONPATH`` itself is not passed: its entries reach a loop, with the plugins folder and config
directory, as ``MULTITRIGGER_SYS_PATH`` (``supervisor.trigger_path``), which the loop applies itself,
so a zygote's forked loops can each get their own loop's list.

``early_loop_env`` is what a zygote is exec'd with before the supervisor has imported Airflow
(``supervisor.prestart``): the same, minus *every* ``AIRFLOW__*`` variable — it needs no Airflow to
compute and holds no secret whatever Airflow would call sensitive.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path

from multitrigger.config.problems import Problem
from multitrigger.loop.blame import reset_blame
from multitrigger.loop.privileges import ENV_USER, first_barrier, own_home
from multitrigger.loop.sys_path import PathEntry

_ENV_KEY = re.compile(r"^AIRFLOW__(?P<section>[A-Z0-9_]+?)__(?P<key>[A-Z0-9_]+?)(_CMD|_SECRET)?$")
_PASSED_SECTIONS = ("triggerer", "logging")
_NEVER_PASSED_SECTIONS = {"database"}
_NEVER_PASSED_KEYS = {("core", "fernet_key"), ("api_auth", "jwt_secret"), ("api", "secret_key")}
#: systemd's notify socket and watchdog are the supervisor's (``sd_notify``): user code must not
#: claim readiness or feed the watchdog for it (``NotifyAccess=main`` also drops what loops send).
_SYSTEMD_NAMES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
_NEVER_PASSED_NAMES = ("AIRFLOW_HOME", "AIRFLOW_CONFIG", "_AIRFLOW_PROCESS_CONTEXT", "PYTHONPATH", *_SYSTEMD_NAMES)
#: Airflow's environment-variables secrets backend: connections and variables of every team. Trigger
#: code still gets them, from the supervisor (a GetConnection/GetVariable request), never from its env.
_NEVER_PASSED_PREFIXES = ("AIRFLOW_CONN_", "AIRFLOW_VAR_")


def _is_secret(section: str, key: str) -> bool:
    from airflow.configuration import conf

    section, key = section.lower(), key.lower()
    if section in _NEVER_PASSED_SECTIONS or (section, key) in _NEVER_PASSED_KEYS:
        return True
    return (section, key) in conf.sensitive_config_values


def _filtered(home: Path, base: Mapping[str, str] | None, drop: Callable[[str, str], bool]) -> dict[str, str]:
    """``base`` (default ``os.environ``) without ``AIRFLOW__<S>__<K>`` variables ``drop`` rejects."""
    env: dict[str, str] = {}
    for name, value in (os.environ if base is None else base).items():
        if name in _NEVER_PASSED_NAMES or name.startswith(_NEVER_PASSED_PREFIXES):
            continue
        match = _ENV_KEY.match(name)
        if match and drop(match["section"], match["key"]):
            continue
        env[name] = value
    env["AIRFLOW_HOME"] = str(home)
    env["AIRFLOW__CORE__FERNET_KEY"] = ""  # kwargs arrive decrypted; see store.plain_kwargs
    env["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    return env


def early_loop_env(home: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A loop environment with no ``AIRFLOW__*`` setting at all; computed without Airflow."""
    return _filtered(home, base, lambda _section, _key: True)


def loop_env(home: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a loop process whose private ``AIRFLOW_HOME`` is ``home``."""
    from airflow.configuration import conf

    env = _filtered(home, base, _is_secret)
    for section in _PASSED_SECTIONS:
        for key, value in conf.getsection(section).items():  # type: ignore[union-attr]
            if not _is_secret(section, key) and value is not None:
                env[f"AIRFLOW__{section.upper()}__{key.upper()}"] = str(value)
    return env


def private_home(home: Path, user: str | None) -> dict[str, str]:
    """Create a loop's home, private (0700); with ``user``, owned by that user, with its blame file
    (``multitrigger.loop.privileges``). Returns what the loop's environment gains."""
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o700)
    if user is None:
        return {}
    blame = home / "blame"
    reset_blame(blame)
    own_home(home, user, (blame,))
    return {ENV_USER: user}


def user_reach_problems(loop: str, user: str, home: Path, entries: tuple[PathEntry, ...]) -> list[Problem]:
    """What loop *loop*, run as *user*, needs and could not reach: its home (a loop that cannot
    open its blame file or write its home dies at once, with nothing in its log to say why; the
    home itself is made the user's by ``private_home``, so its parents are what count), and
    the trigger-code directories its config names (a bundle root, ``python_path``; inherited
    entries such as the plugins folder are the host's, and a missing directory is harmless). Each
    problem names the first closed directory and the key to change."""
    rx = os.R_OK | os.X_OK
    wanted = [(home.parent, os.X_OK, f"loops.{loop}.user", f"its loop home {home}",  # the home itself becomes its own
               f"let {user!r} traverse every directory down to {home.parent} (e.g. chmod o+x, or a group it is in)")]
    for entry in entries:
        if entry.source.startswith("bundle ") and os.path.exists(entry.path):
            wanted.append((Path(entry.path), rx, f"loops.{loop}.bundle_code", f"{entry.source}'s code at {entry.path}",
                           f"make it readable to {user!r} (e.g. chmod o+rx, or a group it is in), or set bundle_code = false"))
        elif entry.source == "python_path" and os.path.exists(entry.path):
            wanted.append((Path(entry.path), rx, f"loops.{loop}.python_path", f"python_path entry {entry.path}",
                           f"make it readable to {user!r} (e.g. chmod o+rx, or a group it is in)"))
    return [Problem(key, f"user {user!r} cannot reach {what} ({barrier} is closed to it)", fix)
            for path, need, key, what, fix in wanted if (barrier := first_barrier(path, user, need)) is not None]
