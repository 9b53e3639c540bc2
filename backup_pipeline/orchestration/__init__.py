"""The thin Dagster shell around the engine: resources, assets, checks, sensors, jobs."""
