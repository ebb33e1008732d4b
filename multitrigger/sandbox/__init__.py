"""Real Airflow 3.3 environments for tests, the demo and benchmarks (see :mod:`multitrigger.sandbox.home`).

Importing this package (or ``multitrigger.sandbox.home``) does not import Airflow;
``multitrigger.sandbox.triggers`` does (it defines real ``BaseTrigger`` subclasses).
"""
