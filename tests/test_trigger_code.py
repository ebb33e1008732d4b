"""
Where loops find trigger code, end to end: real homes, real bundles, a real bundle venv, real
``multitrigger run`` and stock ``airflow triggerer`` processes.

* Parity with stock: a trigger module reachable only through ``PYTHONPATH``, and one only in
  ``[core] plugins_folder``, fire under stock and in every kind of loop (venv loop forked from its
  zygote, process loop exec'd, the default loop forked).
* Beyond stock: a trigger class in a module next to a ``LocalDagBundle``'s DAG file fires in that
  bundle's loop; two bundles with a same-named module each run their own; ``bundle_code = false``
  and ``python_path_mode = "replace"`` take entries away; a class that does not import fails its own
  task with the places the loop looked.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from mt_testsupport.home import AirflowHome, DeferSpec, decode_serde, deferring_dag_source, iso_in
from multitrigger.venvs import create_bundle_venv

pytestmark = pytest.mark.timeout(240)


def _trigger_module(origin: str) -> str:
    """A module with ``CodeTrigger``: fires at ``moment`` with ``origin`` and its own ``__file__``."""
    return textwrap.dedent(f'''\
        from airflow.triggers.base import TriggerEvent
        from mt_testsupport.triggers import FireAtTrigger

        ORIGIN = {origin!r}

        class CodeTrigger(FireAtTrigger):
            async def run(self):
                async for event in super().run():
                    yield TriggerEvent({{**event.payload, "origin": ORIGIN, "file": __file__}})
        ''')


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> AirflowHome:
    root = tmp_path_factory.mktemp("trigcode")
    bundles = {
        name: {f"dag_{name[-1]}.py": deferring_dag_source(f"dag_{name[-1]}", 4), "utils.py": _trigger_module(name)}
        for name in ("team_a", "team_b", "team_c", "shared_s")
    }
    home = AirflowHome.create(root / "home", bundles)
    (home.path / "plugins" / "plug_trig.py").write_text(_trigger_module("plugins"))
    return home


@pytest.fixture(scope="module")
def pythonpath_dir(home: AirflowHome) -> Path:
    """A directory only ``PYTHONPATH`` reaches (and the loops' ``python_path`` one, ``extra``)."""
    root = home.path.parent
    (root / "pp").mkdir(exist_ok=True)
    (root / "pp" / "pp_trig.py").write_text(_trigger_module("PYTHONPATH"))
    (root / "extra").mkdir(exist_ok=True)
    (root / "extra" / "extra_trig.py").write_text(_trigger_module("python_path"))
    return root / "pp"


@pytest.fixture(scope="module")
def venv(home: AirflowHome) -> Path:
    return create_bundle_venv(home.path.parent / "venv_a").parent.parent


def _env(home: AirflowHome, pythonpath_dir: Path) -> dict[str, str]:
    return {"PYTHONPATH": f"{home.env()['PYTHONPATH']}:{pythonpath_dir}"}


def _config(venv: Path) -> str:
    return f"""
        [loops.team_a]
        bundles = ["team_a"]
        venv = "{venv}"

        [loops.team_b]
        bundles = ["team_b"]
        start_method = "exec"
        python_path = ["{venv.parent / 'extra'}"]

        [loops.team_c]
        bundles = ["team_c"]
        bundle_code = false
        python_path_mode = "replace"
        python_path = ["{venv.parent / 'extra'}"]
        """


def _spec(dag: str, task: str, classpath: str, run_id: str, moment: str) -> DeferSpec:
    return DeferSpec(dag, task, classpath, {"moment": moment}, run_id=run_id, encrypt_kwargs=True, validate=False)


def _traceback(state) -> str:
    return "".join(decode_serde(state.next_kwargs)["traceback"])


def test_pythonpath_and_plugins_modules_fire_like_stock_in_every_loop(home, pythonpath_dir, venv, start_triggerer):
    env = _env(home, pythonpath_dir)
    # Stock first, on the same home and environment.
    moment = iso_in(2)
    stock_refs = home.defer_many([_spec("dag_s", "t0", "pp_trig.CodeTrigger", "stock", moment),
                                  _spec("dag_s", "t1", "plug_trig.CodeTrigger", "stock", moment)])
    stock = start_triggerer(home, "--skip-serve-logs", stock=True, env=env, name="stock")
    stock_states = home.wait_for_states(stock_refs, "scheduled", timeout=90)
    stock.stop()
    assert {stock_states[r].event["origin"] for r in stock_refs} == {"PYTHONPATH", "plugins"}, [
        _traceback(stock_states[r]) for r in stock_refs if stock_states[r].next_method == "__fail__"]

    moment = iso_in(0)  # what is asserted is where they ran and what they imported, not when
    specs = [_spec(dag, task, classpath, "mt", moment)
             for dag in ("dag_a", "dag_b", "dag_s")
             for task, classpath in (("t0", "pp_trig.CodeTrigger"), ("t1", "plug_trig.CodeTrigger"))]
    refs = home.defer_many(specs)
    mt = start_triggerer(home, "--skip-serve-logs", env=env, config=_config(venv))
    states = home.wait_for_states(refs, "scheduled", timeout=90)
    failed = [_traceback(states[r]) for r in refs if states[r].next_method == "__fail__"]
    assert not failed, failed
    events = {(r.dag_id, r.task_id): states[r].event for r in refs}
    assert {k: (e["loop"], e["origin"]) for k, e in events.items()} == {
        ("dag_a", "t0"): ("team_a", "PYTHONPATH"), ("dag_a", "t1"): ("team_a", "plugins"),
        ("dag_b", "t0"): ("team_b", "PYTHONPATH"), ("dag_b", "t1"): ("team_b", "plugins"),
        ("dag_s", "t0"): ("default", "PYTHONPATH"), ("dag_s", "t1"): ("default", "plugins"),
    }
    # The same files stock imported; team_a really ran in the venv's interpreter.
    assert events["dag_s", "t0"]["file"] == stock_states[stock_refs[0]].event["file"]
    assert events["dag_s", "t1"]["file"] == stock_states[stock_refs[1]].event["file"]
    assert events["dag_a", "t0"]["executable"] == str(venv / "bin" / "python")
    assert "loop trigger path" in mt.text()


def test_bundle_code_runs_in_its_own_loop_and_a_missing_class_names_where_it_looked(
        home, pythonpath_dir, venv, start_triggerer):
    moment = iso_in(0)
    specs = {
        "team_a": _spec("dag_a", "t2", "utils.CodeTrigger", "bc", moment),  # venv loop, forked
        "team_b": _spec("dag_b", "t2", "utils.CodeTrigger", "bc", moment),  # process loop, exec'd
        "shared_s": _spec("dag_s", "t2", "utils.CodeTrigger", "bc", moment),  # the default loop
        "extend": _spec("dag_b", "t3", "extra_trig.CodeTrigger", "bc", moment),
        "replace": _spec("dag_c", "t0", "extra_trig.CodeTrigger", "bc", moment),
        "no_bundle_code": _spec("dag_c", "t1", "utils.CodeTrigger", "bc", moment),
        "replaced_pythonpath": _spec("dag_c", "t2", "pp_trig.CodeTrigger", "bc", moment),
        "missing": _spec("dag_s", "t3", "missing_mod.NoTrigger", "bc", moment),
    }
    refs = dict(zip(specs, home.defer_many(list(specs.values()))))
    start_triggerer(home, "--skip-serve-logs", env=_env(home, pythonpath_dir), config=_config(venv))
    states = home.wait_for_states(list(refs.values()), "scheduled", timeout=90)
    state = {name: states[ref] for name, ref in refs.items()}

    # Same module name in three bundles: each loop imported its own bundle's utils.py.
    for bundle, loop in (("team_a", "team_a"), ("team_b", "team_b"), ("shared_s", "default")):
        assert state[bundle].next_method == "execute_complete", _traceback(state[bundle])
        event = state[bundle].event
        assert (event["loop"], event["origin"]) == (loop, bundle)
        assert event["file"] == str(home.bundles[bundle] / "utils.py")
    assert (state["extend"].event["loop"], state["extend"].event["origin"]) == ("team_b", "python_path")
    assert (state["replace"].event["loop"], state["replace"].event["origin"]) == ("team_c", "python_path")

    # What a loop does not have fails that task alone, naming the places the loop looked.
    for name in ("no_bundle_code", "replaced_pythonpath", "missing"):
        assert state[name].next_method == "__fail__", name
    no_bundle = _traceback(state["no_bundle_code"])
    assert "No module named 'utils'" in no_bundle and "the loop looked in:" in no_bundle
    assert f"python_path: {venv.parent / 'extra'}" in no_bundle
    assert "bundle team_c" not in no_bundle and "PYTHONPATH:" not in no_bundle
    assert "No module named 'pp_trig'" in _traceback(state["replaced_pythonpath"])
    missing = _traceback(state["missing"])
    assert "cannot import trigger class 'missing_mod.NoTrigger'" in missing
    for line in (f"PYTHONPATH: {pythonpath_dir}", f"plugins_folder: {home.path / 'plugins'}",
                 f"AIRFLOW_HOME/config: {home.path / 'config'}", f"bundle shared_s: {home.bundles['shared_s']}"):
        assert line in missing, missing
    assert "bundle team_a" not in missing


# --- the pieces, without processes ------------------------------------------------------------


def test_each_loop_gets_its_own_entries(tmp_path: Path) -> None:
    from multitrigger.config import load_config
    from multitrigger.loop.sys_path import PathEntry, decode
    from multitrigger.supervisor.trigger_path import TriggerPaths

    (tmp_path / "lib").mkdir()
    cfg = tmp_path / "multitrigger.toml"
    cfg.write_text('[loops.a]\nbundles = ["a"]\npython_path = ["lib"]\n'
                   '[loops.c]\nbundles = ["c"]\nbundle_code = false\npython_path_mode = "replace"\n')
    inherited = [PathEntry("/pp", "PYTHONPATH", "front"), PathEntry("/plugins", "plugins_folder", "back")]
    roots = {name: tmp_path / name for name in ("a", "c", "s", "t")}
    paths = TriggerPaths.compute(load_config(cfg), inherited=inherited, roots=roots)
    assert paths.loops["a"] == (inherited[0], PathEntry(str(tmp_path / "lib"), "python_path", "front"),
                                inherited[1], PathEntry(str(roots["a"]), "bundle a", "back"))
    assert paths.loops["c"] == ()
    # The default loop: every bundle no other loop lists; the zygotes: only what loops inherit.
    assert [e.source for e in paths.loops["default"]] == ["PYTHONPATH", "plugins_folder", "bundle s", "bundle t"]
    assert decode(paths.zygote_env()["MULTITRIGGER_SYS_PATH"]) == inherited
    assert decode(paths.loop_env("a")["MULTITRIGGER_SYS_PATH"]) == list(paths.loops["a"])


def test_apply_replaces_what_it_applied_before(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from multitrigger.loop import sys_path
    from multitrigger.loop.sys_path import ENV_SYS_PATH, PathEntry, encode

    monkeypatch.setattr(sys, "path", ["", "/stdlib", "/site"])
    monkeypatch.setattr(sys_path, "_APPLIED", [])
    zygote = [PathEntry("/pp", "PYTHONPATH", "front"), PathEntry("/plugins", "plugins_folder", "back")]
    sys_path.apply({ENV_SYS_PATH: encode(zygote)})
    assert sys.path == ["", "/pp", "/stdlib", "/site", "/plugins"]
    loop = [PathEntry("/own", "python_path", "front"), PathEntry("/bundle", "bundle a", "back")]
    sys_path.apply({ENV_SYS_PATH: encode(loop)})  # a forked loop with python_path_mode = "replace"
    assert sys.path == ["", "/own", "/stdlib", "/site", "/bundle"]
    assert "python_path: /own" in sys_path.where_looked() and "bundle a: /bundle" in sys_path.where_looked()
