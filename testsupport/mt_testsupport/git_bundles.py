"""Versioned DAG bundles for tests: a real local git repository behind a real ``GitDagBundle``.

No network: the bundle's ``repo_url`` is the repository's local path, which the git provider
(apache-airflow-providers-git 1.0.1, checked against Airflow 3.3.2) clones like any URL
(``GitHook`` expands a path that is not ``git@``/``https://``; with ``repo_url`` set no Airflow
connection is needed). ``AirflowHome.create(..., git_bundles={name: repo})`` adds one
``GitDagBundle`` entry per repository to ``[dag_processor] dag_bundle_config_list``; every
``home.serialize([name])`` then parses the repository's current commit and pins new DAG runs of its
DAGs to that commit (``dag_run.bundle_version``), exactly as the DAG processor and scheduler do.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

GIT_BUNDLE_CLASSPATH = "airflow.providers.git.bundles.git.GitDagBundle"
_GIT_ENV = {"GIT_AUTHOR_NAME": "mt", "GIT_AUTHOR_EMAIL": "mt@localhost", "GIT_COMMITTER_NAME": "mt",
            "GIT_COMMITTER_EMAIL": "mt@localhost", "GIT_CONFIG_NOSYSTEM": "1"}


class GitRepo:
    """A plain (non-bare) git repository on branch ``main``; ``commit`` writes files and commits."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.git("init", "-q", "-b", "main")

    def git(self, *args: str) -> str:
        env = {**os.environ, **_GIT_ENV}
        return subprocess.run(["git", *args], cwd=self.path, env=env, check=True, capture_output=True,
                              text=True).stdout.strip()

    def commit(self, files: Mapping[str, str], message: str = "change") -> str:
        """Write ``files`` (relative name → source), commit them, return the commit's sha."""
        for rel, source in files.items():
            target = self.path / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(source)
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)
        return self.git("rev-parse", "HEAD")

    def bundle_kwargs(self, **extra: Any) -> dict[str, Any]:
        """``GitDagBundle`` kwargs for this repository (tracking ``main``)."""
        return {"repo_url": str(self.path), "tracking_ref": "main", **extra}


def bundle_entries(home: Path, local: Mapping[str, Path], git: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``dag_bundle_config_list`` entries: the home's local bundles, then one per git bundle."""
    from multitrigger.demo.home import LOCAL_BUNDLE_CLASSPATH

    entries = [{"name": name, "classpath": LOCAL_BUNDLE_CLASSPATH, "kwargs": {"path": str(path)}}
               for name, path in local.items()]
    return entries + [{"name": name, "classpath": GIT_BUNDLE_CLASSPATH, "kwargs": dict(kwargs)}
                      for name, kwargs in git.items()]
