"""Schema id -> writer schema: kept in backup_schemas, resolved from a registry or vendored.

Order for an id not yet in backup_schemas:
1. A registry is configured (KAFKA_SCHEMA_REGISTRY): ``GET /schemas/ids/{id}``. An answer
   is kept with source 'registry'. A registry that is down, slow or answers nonsense leaves
   the id *pending*: its rows are listed as ``schema_pending`` and the id is asked again
   after a backoff (5 s doubling to 5 min), so a dead registry costs one timeout per id and
   backoff, never one per row. A 404 (the registry does not know the id, e.g. a registry
   rebuilt after the cluster was lost) falls through to 2.
2. The vendored writer schemas of the table, newest first, on the value at hand: the first
   that decodes every byte of it is kept with source 'vendored:<file>'.
3. Nothing fits: the row is ``unknown_schema`` and waits; it decodes on the next pass once
   the id is known (registry back) or with ``decode --retry-undecodable`` (new vendored file).

Only the decode pass calls this; the raw backup never waits for a registry.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg
import requests
from psycopg.abc import Params

from backup_pipeline.decode.catalog import AvroTable
from backup_pipeline.decode.decoder import (
    DOES_NOT_FIT,
    SCHEMA_PENDING,
    UNKNOWN_SCHEMA,
    Undecodable,
    WriterSchema,
    decode,
    parse,
    vendored_text,
)
from backup_pipeline.settings import Settings

log = logging.getLogger(__name__)

FIRST_BACKOFF = 5.0
MAX_BACKOFF = 300.0


class Executes(Protocol):
    """Where the resolver keeps a schema: the decode pass's connection, or a stand-in that
    hands it over once the pass's writer thread is done with it."""

    def execute(self, query: str, params: Params | None = None) -> psycopg.Cursor[Any]: ...


class RegistryUnavailable(Exception):
    """The registry could not answer now (down, slow, 5xx, nonsense): ask again later."""


class RegistryClient:
    """The one call this pipeline needs of the Confluent REST API."""

    def __init__(
        self,
        url: str,
        *,
        user: str | None = None,
        password: str | None = None,
        ca_path: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        if user:
            self.session.auth = (user, password or "")
        if ca_path:
            self.session.verify = ca_path

    @classmethod
    def from_settings(cls, settings: Settings) -> RegistryClient | None:
        if not settings.kafka_schema_registry.strip():
            return None
        password = settings.kafka_schema_registry_password
        return cls(
            settings.kafka_schema_registry.strip(),
            user=settings.kafka_schema_registry_user,
            password=password.get_secret_value() if password else None,
            ca_path=settings.kafka_ca_path,
            timeout=settings.schema_registry_timeout_seconds,
        )

    def schema(self, schema_id: int) -> str | None:
        """The schema text of an id; None if the registry does not know it (404)."""
        try:
            response = self.session.get(
                f"{self.url}/schemas/ids/{int(schema_id)}", timeout=self.timeout
            )
        except requests.RequestException as exc:
            # The exception text may carry the URL with credentials: name the kind only.
            raise RegistryUnavailable(f"registry not reachable ({type(exc).__name__})") from None
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise RegistryUnavailable(f"registry answered HTTP {response.status_code}")
        try:
            body = response.json()
            schema_type = body.get("schemaType", "AVRO")
            text = body["schema"]
        except (ValueError, KeyError, AttributeError):
            raise RegistryUnavailable("registry answer is not a schema document") from None
        if schema_type != "AVRO" or not isinstance(text, str):
            raise RegistryUnavailable(f"registry gave a {schema_type} schema, not Avro")
        return text

    def close(self) -> None:
        self.session.close()


@dataclass
class Resolver:
    registry: RegistryClient | None = None
    clock: Callable[[], float] = time.monotonic
    known: dict[int, WriterSchema] = field(default_factory=dict)
    _retry_at: dict[int, tuple[float, float]] = field(default_factory=dict)  # id -> (at, backoff)

    def load(self, conn: psycopg.Connection[Any]) -> None:
        """Read backup_schemas (ids another process resolved become known here too)."""
        # Replaced, not merged: an id kept in a transaction that was rolled back is not known.
        rows = conn.execute("SELECT schema_id, schema_json, source FROM backup_schemas").fetchall()
        self.known = {
            schema_id: self.known[schema_id]
            if schema_id in self.known and self.known[schema_id].text == text
            else parse(schema_id, text, source)
            for schema_id, text, source in rows
        }

    def resolve(
        self, conn: Executes, table: AvroTable, schema_id: int, value: bytes
    ) -> WriterSchema:
        """The writer schema of ``schema_id``, kept in backup_schemas on ``conn`` (inside the
        caller's transaction), or Undecodable(SCHEMA_PENDING / UNKNOWN_SCHEMA)."""
        if schema_id in self.known:
            return self.known[schema_id]
        if self.registry is not None:
            writer = self._from_registry(schema_id)
            if writer is not None:
                return self._keep(conn, writer)
        for name in table.vendored:
            candidate = parse(schema_id, vendored_text(name), f"vendored:{name}")
            if candidate.record_name != table.record_name:
                continue
            try:
                decode(table, value, candidate)
            except Undecodable:
                continue
            return self._keep(conn, candidate)
        where = "the registry nor " if self.registry is not None else ""
        raise Undecodable(
            UNKNOWN_SCHEMA,
            f"schema id {schema_id} is known to neither {where}any vendored "
            f"{table.record_name.rsplit('.', 1)[-1]} schema that reads this value",
        )

    def decode(
        self, conn: Executes, table: AvroTable, schema_id: int, value: bytes
    ) -> tuple[Any, ...]:
        """The value columns of ``value``, resolving its schema id first if needed."""
        writer = self.known.get(schema_id) or self.resolve(conn, table, schema_id, value)
        try:
            return decode(table, value, writer)
        except Undecodable as exc:
            if exc.kind != DOES_NOT_FIT or not writer.source.startswith("vendored:"):
                raise
            # The id was attributed to the first vendored schema that read one value of
            # it. Two layouts can read the same value (a Start is laid out alike in both
            # PaaVegneAv versions), so a later value the kept schema cannot read, but an
            # older vendored one reads to the last byte, shows the id's real writer: keep
            # that one instead. The values read before decode alike under both.
            for name in table.vendored:
                if f"vendored:{name}" == writer.source:
                    continue
                candidate = parse(schema_id, vendored_text(name), f"vendored:{name}")
                try:
                    columns = decode(table, value, candidate)
                except Undecodable:
                    continue
                conn.execute(
                    "UPDATE backup_schemas SET schema_json = %s, source = %s, "
                    "resolved_at = now() WHERE schema_id = %s",
                    (candidate.text, candidate.source, schema_id),
                )
                log.info("schema id %s re-attributed to %s", schema_id, candidate.source)
                self.known[schema_id] = candidate
                return columns
            raise

    def may_ask_registry(self, schema_id: int) -> bool:
        """Whether a registry is configured and its backoff for this id has run out."""
        if self.registry is None or schema_id in self.known:
            return False
        return self.clock() >= self._retry_at.get(schema_id, (0.0, 0.0))[0]

    def _from_registry(self, schema_id: int) -> WriterSchema | None:
        assert self.registry is not None
        now = self.clock()
        at, backoff = self._retry_at.get(schema_id, (0.0, 0.0))
        if now < at:
            raise Undecodable(
                SCHEMA_PENDING,
                f"schema id {schema_id}: registry unavailable, asked again in {at - now:.0f} s",
            )
        try:
            text = self.registry.schema(schema_id)
            if text is None:
                # Not an outage, but the registry may learn the id: ask again, not per row.
                backoff = min(MAX_BACKOFF, backoff * 2 if backoff else FIRST_BACKOFF)
                self._retry_at[schema_id] = (now + backoff, backoff)
                return None
            json.loads(text)
            writer = parse(schema_id, text, "registry")
        except (RegistryUnavailable, ValueError, TypeError, KeyError) as exc:
            backoff = min(MAX_BACKOFF, backoff * 2 if backoff else FIRST_BACKOFF)
            self._retry_at[schema_id] = (now + backoff, backoff)
            log.warning("schema id %s: %s; retrying in %.0f s", schema_id, exc, backoff)
            raise Undecodable(
                SCHEMA_PENDING, f"schema id {schema_id}: {exc}; retried automatically"
            ) from None
        self._retry_at.pop(schema_id, None)
        return writer

    def _keep(self, conn: Executes, writer: WriterSchema) -> WriterSchema:
        row = conn.execute(
            """
            INSERT INTO backup_schemas (schema_id, schema_json, record_name, source)
            VALUES (%s, %s, %s, %s)
            ON CONFLICT (schema_id) DO UPDATE SET schema_id = EXCLUDED.schema_id
            RETURNING schema_json, source
            """,
            (writer.schema_id, writer.text, writer.record_name, writer.source),
        ).fetchone()
        assert row is not None
        # Another decoder may have kept the id first: its answer is the one kept.
        if (row[0], row[1]) != (writer.text, writer.source):
            writer = parse(writer.schema_id, row[0], row[1])
        self.known[writer.schema_id] = writer
        return writer
