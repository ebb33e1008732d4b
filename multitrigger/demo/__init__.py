"""The embedded demo (``multitrigger demo``): a real Airflow 3.3 home on SQLite
(:mod:`multitrigger.demo.home`), its DAGs and triggers, and the run that shows each trigger's loop.

Importing this package (or ``multitrigger.demo.home``) does not import Airflow;
``multitrigger.demo.triggers`` does (it defines real ``BaseTrigger`` subclasses).
"""
