"""Decoded Avro for analysts: writer schemas kept in PostgreSQL, typed tables maintained
incrementally from the raw tables (docs/decoded-tables.md). No Dagster import here."""
