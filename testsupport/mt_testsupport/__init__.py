"""Test and benchmark support for multitrigger: real Airflow homes (:mod:`mt_testsupport.home`),
test, crash and benchmark triggers, process-tree helpers.

A distribution of its own (``testsupport/pyproject.toml``), installed editable by
``scripts/setup.sh`` and never part of the multitrigger wheel.  It is installed into the project
venv (not put on ``PYTHONPATH``): site-packages is how a loop -- including one in a layered bundle
venv, or one whose ``python_path_mode = "replace"`` drops the ``PYTHONPATH`` entries -- imports the
test trigger classes.

Importing this package (or ``mt_testsupport.home``) does not import Airflow; the trigger modules do.
"""
