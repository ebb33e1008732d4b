"""Per-loop health: what loops report (``loop_health``), the immutable snapshot the selector thread
publishes (``snapshot``), the HTTP server that serves it (``server``), its Prometheus collector
(``collector``), per-process memory and CPU (``procstats``) and Airflow's own metrics
(``airflow_stats``)."""
