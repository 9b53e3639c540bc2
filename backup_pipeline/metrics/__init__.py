"""Live numbers for Prometheus (`backup-pipeline metrics`), read at each scrape.

readings.py reads PostgreSQL, Kafka and Dagster's run storage within one deadline into
scrape.py's Reading; collector.py turns a reading into metric families; server.py serves
them over HTTP.
Nothing here writes, so the Dagster event log does not grow with scrapes.
"""
