"""The HTTP endpoint: prometheus_client's own threaded server on a registry of our own."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server

from backup_pipeline.metrics.collector import registry
from backup_pipeline.metrics.readings import Reader
from backup_pipeline.metrics.scrape import Reading
from backup_pipeline.settings import Settings
from backup_pipeline.topics import TOPICS

log = logging.getLogger(__name__)


@dataclass
class MetricsServer:
    reader: Reader
    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
        self.reader.close()


def start(settings: Settings, host: str, port: int) -> tuple[MetricsServer, Reading]:
    """Warm up (the first, unbounded reading counts every table once), then listen.
    ``port`` 0 picks a free one (tests). Returns the server and the warm-up reading."""
    reader = Reader(settings, list(TOPICS))
    first = reader.warm_up()
    server, thread = start_http_server(port, addr=host, registry=registry(reader))
    log.info("metrics: serving http://%s:%d/metrics", host, server.server_port)
    return MetricsServer(reader, server, thread), first
