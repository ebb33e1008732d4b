"""
Where each loop finds trigger code: computed once, in the supervisor, from its resolved config.

Why here: a loop gets a private ``AIRFLOW_HOME`` and no ``PYTHONPATH`` (``supervisor.launch``), so
it cannot find what stock ``airflow triggerer`` finds on the same host unless the supervisor tells
it. Checked against Airflow 3.3.2:

* ``PYTHONPATH``: the stock triggerer's runner inherits it. Relative entries are made absolute
  against the supervisor's working directory (a loop runs in its own);
* ``[core] plugins_folder`` and ``$AIRFLOW_HOME/config``: ``airflow/settings.py``
  ``prepare_syspath_for_config_and_plugins`` appends both (``settings.PLUGINS_FOLDER``,
  ``settings.AIRFLOW_HOME``);
* beyond stock, each ``LocalDagBundle``'s ``path`` (``DagBundlesManager`` over ``[dag_processor]
  dag_bundle_config_list``), on the loop its bundle is routed to only — as a worker appends it
  (``dag_processing/dagbag.py`` ``BundleDagBag``) — so ``team_a/utils.py`` and ``team_b/utils.py``
  never meet;
* a versioned bundle's checkout at one version (``GitDagBundle``, made by
  ``supervisor.bundle_versions``), appended to its loop's list in that version's own process only
  (:meth:`TriggerPaths.version_env`).

Per loop: ``python_path`` entries after the inherited front entries (``python_path_mode =
"extend"``) or instead of every inherited entry (``"replace"``); ``bundle_code = false`` leaves the
bundle roots out. The result travels as ``multitrigger.loop.sys_path.ENV_SYS_PATH``; a directory
is not a secret, and nothing else from the configuration goes with it.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog

from multitrigger.config import Config, LoopConfig
from multitrigger.loop.sys_path import ENV_SYS_PATH, PathEntry, encode

log = structlog.get_logger(__name__)
_BUNDLE_SOURCE = "bundle "  # a PathEntry source naming bundle code: "bundle <name>[ version <v>]"


def inherited_entries(environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> list[PathEntry]:
    """What the stock triggerer on this host and config has on ``sys.path`` besides packages."""
    from airflow import settings

    environ = os.environ if environ is None else environ
    cwd = cwd or Path.cwd()
    entries = [PathEntry(os.path.normpath(cwd / p), "PYTHONPATH", "front")
               for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    entries.append(PathEntry(str(settings.PLUGINS_FOLDER), "plugins_folder", "back"))
    entries.append(PathEntry(os.path.join(settings.AIRFLOW_HOME, "config"), "AIRFLOW_HOME/config", "back"))
    return entries


def local_bundle_roots() -> dict[str, Path]:
    """bundle name → root, for every configured ``LocalDagBundle`` (or subclass).

    A bundle configuration that does not load (e.g. a missing provider) is logged and gives no
    roots: the DAG processor reports it; triggers still run from the other places."""
    try:
        from airflow.dag_processing.bundles.local import LocalDagBundle
        from airflow.dag_processing.bundles.manager import DagBundlesManager

        bundles = list(DagBundlesManager().get_all_dag_bundles())
    except Exception as err:  # noqa: BLE001 - see docstring
        log.warning("cannot read the DAG bundle configuration; loops get no bundle code", error=str(err))
        return {}
    return {b.name: Path(b.path) for b in bundles if isinstance(b, LocalDagBundle)}


def versioned_bundle_names() -> set[str]:
    """Every configured bundle whose class supports versions (``GitDagBundle``): its triggers run
    the version their DAG run is pinned to (``supervisor.bundle_versions``), not a fixed root."""
    try:
        from airflow.dag_processing.bundles.manager import DagBundlesManager

        return {b.name for b in DagBundlesManager().get_all_dag_bundles() if b.supports_versioning}
    except Exception as err:  # noqa: BLE001 - as local_bundle_roots
        log.warning("cannot read the DAG bundle configuration", error=str(err))
        return set()


def loop_bundles(loop: LoopConfig, config: Config, known: Collection[str]) -> list[str]:
    """The bundles of *known* routed to ``loop`` (``Config.loop_for_bundle``)."""
    return sorted(b for b in known if config.loop_for_bundle(b) == loop.name)


@dataclass(frozen=True)
class TriggerPaths:
    """The entries of every loop, and of the zygotes (the inherited ones, shared by their loops)."""

    inherited: tuple[PathEntry, ...]
    loops: Mapping[str, tuple[PathEntry, ...]]

    @classmethod
    def compute(cls, config: Config, inherited: list[PathEntry] | None = None,
                roots: Mapping[str, Path] | None = None, *, log_entries: bool = True) -> TriggerPaths:
        inherited = inherited_entries() if inherited is None else inherited
        roots = local_bundle_roots() if roots is None else roots
        loops = {name: tuple(_for_loop(loop, config, inherited, roots)) for name, loop in config.loops.items()}
        for name, entries in loops.items() if log_entries else ():
            log.info("loop trigger path", loop=name, entries=[f"{e.source}={e.path}" for e in entries])
        return cls(tuple(inherited), loops)

    def zygote_env(self) -> dict[str, str]:
        return {ENV_SYS_PATH: encode(self.inherited)}

    def loop_env(self, name: str) -> dict[str, str]:
        return {ENV_SYS_PATH: encode(self.loops[name])}

    def version_env(self, name: str, bundle: str, version: str, root: Path) -> dict[str, str]:
        """Loop ``name``'s entries, but of bundle code only ``root``: ``bundle``'s checkout at
        ``version`` (the process runs that bundle's triggers only, so another bundle's same-named
        module never shadows it)."""
        own = [e for e in self.loops[name] if not e.source.startswith(_BUNDLE_SOURCE)]
        own.append(PathEntry(str(root), f"{_BUNDLE_SOURCE}{bundle} version {version}", "back"))
        return {ENV_SYS_PATH: encode(own)}


def _for_loop(loop: LoopConfig, config: Config, inherited: list[PathEntry],
              roots: Mapping[str, Path]) -> list[PathEntry]:
    base = [] if loop.python_path_mode == "replace" else inherited
    own = [PathEntry(str(p), "python_path", "front") for p in loop.python_path]
    front = [e for e in base if e.position == "front"] + own
    back = [e for e in base if e.position == "back"]
    if loop.bundle_code:
        back += [PathEntry(str(roots[b]), f"{_BUNDLE_SOURCE}{b}", "back") for b in loop_bundles(loop, config, roots)
                 if b in roots]
    return front + back
