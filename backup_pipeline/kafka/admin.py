"""Creating topics (demo, tests, restore targets) with the AdminClient."""

from __future__ import annotations

from collections.abc import Mapping

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from backup_pipeline.errors import KafkaUnavailableError
from backup_pipeline.kafka.config import serve_admin_log


def create_topics(
    admin: AdminClient,
    names: list[str],
    partitions: int = 3,
    timeout: float = 30.0,
    config: Mapping[str, str] | None = None,
    replication_factor: int = 1,
) -> list[str]:
    """Create the topics that don't exist yet, with ``config``; return the names created.

    ``replication_factor`` -1 takes the broker's ``default.replication.factor``.
    """
    existing = set(admin.list_topics(timeout=timeout).topics)
    wanted = [
        NewTopic(
            n,
            num_partitions=partitions,
            replication_factor=replication_factor,
            config=dict(config or {}),
        )
        for n in names
        if n not in existing
    ]
    if not wanted:
        return []
    futures = admin.create_topics(wanted, operation_timeout=timeout, request_timeout=timeout)
    created = []
    for name, future in futures.items():
        try:
            future.result()
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                serve_admin_log(admin)
                raise KafkaUnavailableError(f"cannot create topic {name}: {exc}") from None
    return created
