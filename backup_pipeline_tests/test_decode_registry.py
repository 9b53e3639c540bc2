"""Decoding with a Confluent schema registry: values decode with the registry's schema, which is
kept; a registry that is down, slow, answering nonsense or refusing the credentials leaves
rows pending (never guessed) and never shows the password."""

from __future__ import annotations

import base64
import json
import random
import struct
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from backup_pipeline.decode.catalog import BEKREFTELSER
from backup_pipeline.decode.decoder import vendored_text
from backup_pipeline.decode.resolver import RegistryClient, Resolver
from backup_pipeline.decode.undecodable import status
from backup_pipeline.demo.data import avro_record
from backup_pipeline_tests.test_decode import decoded, framed, run, store_raw, undecodable


class FakeRegistry:
    """A minimal Confluent REST schema registry: GET /schemas/ids/{id}, basic auth."""

    def __init__(self, schemas: dict[int, str], user: str, password: str) -> None:
        self.schemas = schemas
        self.requests = 0
        self.delay = threading.Event()  # set: answer only after the client gave up
        expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                if outer.delay.is_set():
                    threading.Event().wait(1.5)  # far past the client's timeout
                if self.headers.get("Authorization") != expected:
                    return self._send(401, {"error_code": 401, "message": "Unauthorized"})
                prefix = "/schemas/ids/"
                if not self.path.startswith(prefix):
                    return self._send(404, {"error_code": 404, "message": "HTTP 404"})
                schema = outer.schemas.get(int(self.path[len(prefix) :]))
                if schema is None:
                    return self._send(404, {"error_code": 40403, "message": "Schema not found"})
                return self._send(200, {"schema": schema})

            def _send(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (the slow-registry test)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def registry_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(vendored_text("bekreftelse-v1.avsc"))
    schema["fields"].append({"name": "fraRegistry", "type": "int", "default": 0})
    return schema


@pytest.fixture
def registry(registry_schema: dict[str, Any]) -> Iterator[FakeRegistry]:
    server = FakeRegistry({42: json.dumps(registry_schema)}, "reg-user", "reg-secret")
    yield server
    server.stop()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_values_decode_with_the_registry_schema_and_keep_it(
    db, database_url, registry, registry_schema
):
    value = framed(
        42, registry_schema, dict(avro_record(random.Random(9), "bekreftelser"), fraRegistry=7)
    )
    store_raw(db, BEKREFTELSER, [value] * 3)
    client = RegistryClient(
        f"http://127.0.0.1:{registry.port}", user="reg-user", password="reg-secret"
    )

    report = run(database_url, BEKREFTELSER, Resolver(registry=client))

    assert (report.decoded, report.undecodable) == (3, 0)
    assert registry.requests == 1  # once per id, not per row
    [(source, text)] = db.execute("SELECT source, schema_json FROM backup_schemas").fetchall()
    assert (source, json.loads(text)) == ("registry", registry_schema)


def test_a_registry_that_is_down_leaves_rows_pending_and_they_decode_when_it_is_back(
    db, database_url, registry, registry_schema
):
    value = framed(
        42, registry_schema, dict(avro_record(random.Random(10), "bekreftelser"), fraRegistry=1)
    )
    port = registry.port
    registry.stop()  # down: connection refused
    store_raw(db, BEKREFTELSER, [value] * 4)
    clock = Clock()
    resolver = Resolver(
        registry=RegistryClient(
            f"http://127.0.0.1:{port}", user="reg-user", password="reg-secret", timeout=2
        ),
        clock=clock,
    )

    report = run(database_url, BEKREFTELSER, resolver)

    # The pass went on past them: the watermark is at the end, the rows are listed.
    assert (report.decoded, report.undecodable, report.raw_rows) == (0, 4, 4)
    assert {k for _, _, k, _, _ in undecodable(db, BEKREFTELSER)} == {"schema_pending"}
    assert db.execute("SELECT count(*) FROM backup_schemas").fetchone()[0] == 0

    back = FakeRegistry(registry.schemas, "reg-user", "reg-secret")
    try:
        resolver.registry = RegistryClient(
            f"http://127.0.0.1:{back.port}", user="reg-user", password="reg-secret"
        )
        # Within the backoff the registry is not asked again...
        assert run(database_url, BEKREFTELSER, resolver).redecoded == 0
        assert back.requests == 0
        # ...after it, the waiting rows decode on the next pass by themselves.
        clock.now += 10
        report = run(database_url, BEKREFTELSER, resolver)
    finally:
        back.stop()
    assert report.redecoded == 4
    assert len(decoded(db, BEKREFTELSER)) == 4
    assert status(db, BEKREFTELSER).open_undecodable == 0


def test_a_slow_registry_costs_one_timeout_per_id_not_per_row(
    db, database_url, registry, registry_schema
):
    value = framed(
        42, registry_schema, dict(avro_record(random.Random(15), "bekreftelser"), fraRegistry=1)
    )
    store_raw(db, BEKREFTELSER, [value] * 5)
    registry.delay.set()
    client = RegistryClient(
        f"http://127.0.0.1:{registry.port}", user="reg-user", password="reg-secret", timeout=0.3
    )

    report = run(database_url, BEKREFTELSER, Resolver(registry=client, clock=Clock()))

    assert (report.decoded, report.undecodable, report.raw_rows) == (0, 5, 5)
    assert registry.requests == 1
    assert {k for _, _, k, _, _ in undecodable(db, BEKREFTELSER)} == {"schema_pending"}


def test_a_registry_answering_nonsense_leaves_the_id_pending(db, database_url, registry):
    registry.schemas[42] = "{not json"
    store_raw(db, BEKREFTELSER, [b"\x00" + struct.pack(">I", 42) + b"\x02"])
    client = RegistryClient(
        f"http://127.0.0.1:{registry.port}", user="reg-user", password="reg-secret"
    )
    run(database_url, BEKREFTELSER, Resolver(registry=client))
    assert [k for _, _, k, _, _ in undecodable(db, BEKREFTELSER)] == ["schema_pending"]


def test_wrong_registry_credentials_never_show_the_password(db, database_url, registry):
    store_raw(db, BEKREFTELSER, [b"\x00" + struct.pack(">I", 42) + b"\x02"])
    client = RegistryClient(
        f"http://127.0.0.1:{registry.port}", user="reg-user", password="hunter2"
    )
    run(database_url, BEKREFTELSER, Resolver(registry=client))
    [(_, _, kind, reason, _)] = undecodable(db, BEKREFTELSER)
    assert kind == "schema_pending" and "401" in reason and "hunter2" not in reason
