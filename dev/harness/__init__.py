"""The harness the tests, bench/ and soak/ share, outside the test package so the tools do
not import it (issue 20): waits on one scale factor (``waits``), processes and free ports
(``processes``), a dev/services instance of one's own (``services``), Dagster as production
runs it (``stack``, also dev/dagster's) and a test's handle on it (``dagster``), and the few
Kafka and PostgreSQL probes every one of them reads the backup with (``kafka``, ``db``).

Importable as ``dev.harness`` from a checkout: pytest puts the repository root on
``sys.path`` (rootdir), bench/ and soak/ scripts insert it themselves.
"""
