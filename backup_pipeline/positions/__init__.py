"""Consumer-group positions: recorded from the live cluster (snapshot), translated into a
restored topic's offsets and committed there (plan). No Dagster import."""
