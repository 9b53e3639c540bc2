"""Everything Dagster knows about one topic, built by one factory.

Adding a topic to ``topics.TOPICS`` (and its migration) gives it its assets, checks, jobs
and sensors here; ``definitions.py`` merges one of these per topic.
"""

import dagster as dg

from backup_pipeline.orchestration.assets import table_asset, topic_spec
from backup_pipeline.orchestration.checks import table_checks
from backup_pipeline.orchestration.jobs import backup_job, reingest_job
from backup_pipeline.orchestration.restore_jobs import verify_check
from backup_pipeline.orchestration.sensors import backup_sensor, reingest_sensor
from backup_pipeline.topics import TopicSpec


def topic_definitions(spec: TopicSpec) -> dg.Definitions:
    """The topic's external asset and its table's asset; the table's health checks and the
    topic's sample verify check; the backup and re-ingest jobs and their sensors."""
    return dg.Definitions(
        assets=[topic_spec(spec), table_asset(spec)],
        asset_checks=[table_checks(spec), verify_check(spec)],
        jobs=[backup_job(spec), reingest_job(spec)],
        sensors=[backup_sensor(spec), reingest_sensor(spec)],
    )
