"""The metadata databases sandbox homes start from: a migrated SQLite template per Airflow version
(copied per home: a copy costs milliseconds, ``airflow db migrate`` seconds), and PostgreSQL
databases of their own."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import tempfile
from importlib import metadata as _metadata
from pathlib import Path

from multitrigger.demo.workers import HomeError


def airflow_version() -> str:
    """Installed apache-airflow-core version, read from package metadata (does not import Airflow)."""
    try:
        return _metadata.version("apache-airflow-core")
    except _metadata.PackageNotFoundError:  # pragma: no cover
        return _metadata.version("apache-airflow")


def template_db_path(version: str | None = None) -> Path:
    """Where the migrated SQLite template DB for this Airflow version lives (shared by all homes)."""
    base = Path(os.environ.get("MULTITRIGGER_TEMPLATE_DIR") or tempfile.gettempdir())
    return base / f"multitrigger-airflow-template-{version or airflow_version()}.db"


def ensure_pg_database(server_url: str, name: str) -> str:
    """Create PostgreSQL database ``name`` on the server of ``server_url`` if missing; return its URL.

    Handy to give a home a database of its own instead of resetting a shared one.
    """
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    if not name.replace("_", "").isalnum():
        raise ValueError(f"unsafe database name {name!r}")
    url = make_url(server_url)
    engine = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            if not conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first():
                with contextlib.suppress(Exception):  # lost a race with another creator: fine
                    conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


def _sqlite_snapshot(source: Path, target: Path) -> None:
    """Consistent single-file copy of a (possibly WAL-mode) SQLite DB, in rollback-journal mode."""
    import sqlite3

    src = sqlite3.connect(str(source))
    dst = sqlite3.connect(str(target))
    try:
        src.backup(dst)
        dst.execute("PRAGMA journal_mode=DELETE")
        dst.commit()
        (tables,) = dst.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()
        (revisions,) = dst.execute("SELECT count(*) FROM alembic_version").fetchone()
        if tables < 50 or revisions != 1:
            raise HomeError(f"migrated template DB looks incomplete ({tables} tables, {revisions} revisions)")
    finally:
        dst.close()
        src.close()


def ensure_template_db(*, python: str = sys.executable, timeout: float = 900) -> Path:
    """Return the migrated SQLite template DB, building it once (under a file lock) if missing."""
    template = template_db_path()
    if template.exists() and template.stat().st_size > 65536:
        return template
    template.parent.mkdir(parents=True, exist_ok=True)
    lock_path = template.with_suffix(".lock")
    with open(lock_path, "a") as lock_fh:
        fcntl.flock(lock_fh, fcntl.LOCK_EX)
        try:
            if template.exists() and template.stat().st_size > 65536:  # built while we waited
                return template
            with tempfile.TemporaryDirectory(prefix="multitrigger-template-") as tmp:
                tmp_path = Path(tmp)
                db_file = tmp_path / "airflow.db"
                from mt_testsupport.home import AirflowHome

                builder = AirflowHome(path=tmp_path, db_url=f"sqlite:///{db_file}", bundles={}, python=python)
                for sub in ("dags", "logs", "plugins", "bundle-storage", ".sandbox"):
                    (tmp_path / sub).mkdir(exist_ok=True)
                builder._write_config({})
                builder._run_worker("migrate", {"reset": False}, timeout=timeout)
                partial = template.with_name(f"{template.name}.{os.getpid()}.partial")
                partial.unlink(missing_ok=True)
                _sqlite_snapshot(db_file, partial)
                os.replace(partial, template)
            return template
        finally:
            fcntl.flock(lock_fh, fcntl.LOCK_UN)


def pg_template_name(version: str | None = None) -> str:
    """The migrated PostgreSQL template database for this Airflow version (shared by every home)."""
    return "mt_template_" + "".join(c if c.isalnum() else "_" for c in (version or airflow_version()))


def recreate_pg_from_template(url: str, *, python: str = sys.executable, timeout: float = 900) -> None:
    """Make the database of ``url`` a fresh copy of the migrated template (``CREATE DATABASE ...
    TEMPLATE``: about a second, where ``airflow db reset`` takes some 20 s). The template is built
    once per Airflow version, under a file lock, as ``<name>_building`` renamed when complete, so a
    half-built one is never copied. Whatever is still connected to the old database is cut off."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    target = make_url(url)
    name, template = target.database, pg_template_name()
    if not name or not name.replace("_", "").isalnum():
        raise ValueError(f"unsafe database name {name!r}")
    admin = create_engine(target.set(database="postgres"), poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            if not _pg_exists(conn, template):
                _build_pg_template(conn, target, template, python, timeout)
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    finally:
        admin.dispose()


def _pg_exists(conn, name: str) -> bool:  # type: ignore[no-untyped-def]
    from sqlalchemy import text

    return conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first() is not None


def _build_pg_template(conn, target, template: str, python: str, timeout: float) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import text

    lock_path = template_db_path().with_name(f"{template}.lock")
    with open(lock_path, "a") as lock_fh:
        fcntl.flock(lock_fh, fcntl.LOCK_EX)
        try:
            if _pg_exists(conn, template):  # built while we waited
                return
            building = f"{template}_building"
            conn.execute(text(f'DROP DATABASE IF EXISTS "{building}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{building}"'))
            with tempfile.TemporaryDirectory(prefix="multitrigger-pg-template-") as tmp:
                from mt_testsupport.home import AirflowHome

                tmp_path = Path(tmp)
                url = target.set(database=building).render_as_string(hide_password=False)
                builder = AirflowHome(path=tmp_path, db_url=url, bundles={}, python=python)
                for sub in ("dags", "logs", "plugins", "bundle-storage", ".sandbox"):
                    (tmp_path / sub).mkdir(exist_ok=True)
                builder._write_config({})
                builder._run_worker("migrate", {"reset": False}, timeout=timeout)
            conn.execute(text(f'ALTER DATABASE "{building}" RENAME TO "{template}"'))
        finally:
            fcntl.flock(lock_fh, fcntl.LOCK_UN)
