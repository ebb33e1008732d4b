"""
``multitrigger`` command line.

``multitrigger run`` replaces ``airflow triggerer`` and takes its flags with their stock meaning —
they are Airflow's own ``Arg`` objects (checked against Airflow 3.3.2), plus ``--config``.
``multitrigger config check`` validates the config including a real handshake with every loop's
interpreter; ``multitrigger venv create`` makes a layered bundle virtualenv; ``multitrigger status``
shows a running supervisor's loops (``multitrigger.status``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from multitrigger.paths import default_config_path

if TYPE_CHECKING:
    from multitrigger.config import Config
    from multitrigger.scope import Scope


def _add_config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="multitrigger config file (default: $AIRFLOW_HOME/multitrigger.toml; "
        "no file = every bundle in one default loop, like the stock triggerer)",
    )


def _add_status_parser(sub) -> None:  # type: ignore[no-untyped-def]
    status = sub.add_parser("status", help="Show a running supervisor's loops (exit 0 when healthy)")
    _add_config_arg(status)
    status.add_argument("--url", default=None, help="health server URL (default: the running supervisor's, "
                        "from $AIRFLOW_HOME/multitrigger/health.json, else [health] host and port)")
    status.add_argument("--json", action="store_true", help="print the /loops document as JSON")
    status.add_argument("--watch", nargs="?", const=2.0, type=float, default=None, metavar="SECONDS",
                        help="redraw every SECONDS (default 2) until interrupted")
    status.set_defaults(func=cmd_status)


def _status_only_parser() -> argparse.ArgumentParser:
    """``multitrigger status`` alone: a probe must not pay for importing Airflow (~4 s)."""
    parser = argparse.ArgumentParser(prog="multitrigger")
    _add_status_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def _add_bundles_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bundles",
        type=lambda value: [b for b in value.split(",") if b],
        action="extend",
        default=None,
        help="serve only these DAG bundles (comma-separated; overrides [supervisor] bundles). "
        "Without it: every bundle whose loop is not level \"dedicated\"",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="multitrigger", description="Multi-loop, isolated Airflow triggerer.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="Start a triggerer (replaces `airflow triggerer`)")
    from airflow.cli import cli_config as a

    for arg in (a.ARG_PID, a.ARG_DAEMON, a.ARG_STDOUT, a.ARG_STDERR, a.ARG_LOG_FILE, a.ARG_CAPACITY,
                a.ARG_VERBOSE, a.ARG_SKIP_SERVE_LOGS, a.ARG_QUEUES, a.ARG_TRIGGERER_TEAM_NAME):
        arg.add_to_parser(run)
    _add_config_arg(run)
    health = run.add_argument_group("health server (overrides [health] in the config)")
    health.add_argument("--health-host", default=None, help="address to bind the health server to (default 127.0.0.1)")
    health.add_argument("--health-port", type=int, default=None, help="port of the health server (default 8796; 0: any free port)")
    health.add_argument("--no-health", action="store_true", help="do not start the health server")
    _add_bundles_arg(run)
    run.set_defaults(func=cmd_run)

    _add_status_parser(sub)

    config = sub.add_parser("config", help="Configuration commands").add_subparsers(dest="config_command", required=True)
    check = config.add_parser("check", help="Validate the config and hand-shake with every loop's interpreter")
    _add_config_arg(check)
    _add_bundles_arg(check)
    check.set_defaults(func=cmd_config_check)

    venv = sub.add_parser("venv", help="Bundle virtualenvs").add_subparsers(dest="venv_command", required=True)
    create = venv.add_parser("create", help="Create a bundle venv layered on this environment")
    create.add_argument("path", type=Path, help="Where to create the venv (e.g. /opt/venvs/team_a)")
    create.add_argument("-r", "--requirement", type=Path, default=None, help="requirements file to install")
    create.add_argument("packages", nargs="*", help="extra requirement specifiers to install")
    create.set_defaults(func=cmd_venv_create)

    demo = sub.add_parser("demo", help="Build a local SQLite Airflow home with example bundles and run on it")
    demo.add_argument("--home", type=Path, default=Path("var/demo"), help="where to build the demo home")
    demo.add_argument("--seconds", type=float, default=40.0, help="how long to run before stopping")
    demo.set_defaults(func=cmd_demo)
    return parser


def _load(args: argparse.Namespace, probe: bool = False):
    from multitrigger.config import load_config

    explicit = args.config is not None
    return load_config(args.config if explicit else default_config_path(), must_exist=explicit, probe=probe)


def cmd_config_check(args: argparse.Namespace) -> int:
    from multitrigger.config import ConfigError

    try:
        config = _load(args, probe=True)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    from multitrigger.scope import Scope, served_config
    from multitrigger.supervisor.trigger_path import TriggerPaths, loop_bundles, versioned_bundle_names

    scope = Scope.of(config, args.bundles)
    paths = TriggerPaths.compute(served_config(config, scope), log_entries=False)  # reads this host's Airflow config
    versioned = versioned_bundle_names()
    source = config.source or "(no config file: built-in default)"
    print(f"{source}: OK")
    print(f"  this instance serves: {scope.served.describe()}")
    for line in bundle_lines(config, scope):
        print(f"  {line}")
    for loop in config.loops.values():
        bundles = ", ".join(sorted(loop.bundles)) or "(every bundle not listed elsewhere)"
        user = f", user {loop.user}" if loop.user else ""
        here = "" if loop.name in scope.loops else " (not run by this instance)"
        print(f"  loop {loop.name}: {loop.level}, python {loop.python}{user}, bundles {bundles}{here}")
        for entry in paths.loops.get(loop.name, ()):
            print(f"    trigger code: {entry.source}: {entry.path}")
        for bundle in [b for b in loop_bundles(loop, config, versioned) if b in versioned] if loop.bundle_code else ():
            print(f"    trigger code: bundle {bundle}: the version each DAG run is pinned to, in its own process "
                  f"(at most {loop.max_bundle_versions} versions at once)")
    return 0


def bundle_lines(config: Config, scope: Scope) -> list[str]:
    """One line per bundle (and one for every other bundle): its loop, level, capacity share, and
    whether this instance runs it."""
    from multitrigger.config import DEFAULT_LOOP

    lines = []
    shared = {b for bundles in config.shared.values() for b in bundles}
    named: list[str | None] = sorted({b for lp in config.loops.values() for b in lp.bundles} | shared)
    for bundle in named + [None]:
        loop = config.loops[config.loop_for_bundle(bundle) or DEFAULT_LOOP]  # the file's config: serves every bundle
        level = "shared" if bundle in shared else loop.level
        share = f"capacity share {loop.capacity}" if loop.capacity else "no capacity share (the instance's --capacity)"
        here = "runs here" if bundle in scope.served else "not run here" + (
            f" (an instance started with --bundles {bundle} runs it)" if level == "dedicated" else "")
        lines.append(f"bundle {bundle or '(any other)'}: loop {loop.name}, level {level}, {share}; {here}")
    return lines


def cmd_venv_create(args: argparse.Namespace) -> int:
    from multitrigger.venvs import VenvError, create_bundle_venv

    try:
        python = create_bundle_venv(args.path, requirements=args.packages or None, requirements_file=args.requirement)
    except VenvError as err:
        print(f"multitrigger venv create: {err}", file=sys.stderr)
        return 2
    print(f"created {args.path} (interpreter {python}); use it with:\n  venv = \"{args.path}\"")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from multitrigger.config import ConfigError

    try:
        config = _load(args)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    from multitrigger.supervisor.entry import run_triggerer

    from pydantic import ValidationError

    try:
        config = _with_health_flags(config, args)
    except ValidationError as err:
        problems = "; ".join(f"--health-{e['loc'][0]}: {e['msg']}" for e in err.errors())
        print(f"multitrigger run: {problems}", file=sys.stderr)
        return 2
    try:
        return run_triggerer(args, config)
    except ConfigError as err:  # a limit this host cannot apply (multitrigger.cgroups.loops)
        print(err, file=sys.stderr)
        return 2


def _with_health_flags(config, args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """``config`` with ``--health-host``/``--health-port``/``--no-health`` applied to ``[health]``."""
    import dataclasses

    from multitrigger.config import HealthSettings

    update = {k: v for k, v in (("host", args.health_host), ("port", args.health_port)) if v is not None}
    if args.no_health:
        update["enabled"] = False
    if not update:
        return config
    health = HealthSettings.model_validate(config.health.model_dump() | update)
    return dataclasses.replace(config, health=health)


def cmd_status(args: argparse.Namespace) -> int:
    from multitrigger.status import run_status

    return run_status(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from multitrigger.demo.run import run_demo

    return run_demo(args.home, args.seconds)


def main(argv: list[str] | None = None) -> None:
    from multitrigger.unused_imports import skip_unused_imports

    skip_unused_imports()  # before anything imports structlog or httpx (multitrigger.unused_imports)
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["run"]:  # before anything imports Airflow: see multitrigger.supervisor.prestart
        from multitrigger.supervisor.prestart import prestart_for_argv

        prestart_for_argv(argv[1:])
    args = (_status_only_parser() if argv[:1] == ["status"] else build_parser()).parse_args(argv)
    if args.func is not cmd_run:
        sys.exit(args.func(args) or 0)
    from multitrigger.supervisor.prestart import configure_prestarted

    configure_prestarted()  # Airflow is imported now (build_parser): prestarted zygotes can import it too
    _exit_now(_run_to_code(args))


def _run_to_code(args: argparse.Namespace) -> int:
    try:
        return args.func(args) or 0
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        return 1


def _exit_now(code: int) -> None:
    """End ``run`` without the interpreter's teardown. By now the supervisor has stopped its loops
    and zygotes, removed their cgroups and persisted what the DB would take; teardown (atexit's ORM
    dispose, a lane thread still inside a black-holed DB call) must not keep a stopping supervisor
    alive past its grace period, which is what a service manager and HA peers count on."""
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
