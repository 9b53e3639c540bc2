"""A stand-in for confluent_kafka.Message, for the pure mapping tests only."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FakeMessage:
    key_: bytes | None
    value_: bytes | None
    headers_: list[tuple[str, bytes | None]] | None = None
    partition_: int = 0
    offset_: int = 0
    timestamp_: tuple[int, int] = (1, 1_735_689_600_123)
    extra: dict[str, object] = field(default_factory=dict)

    def partition(self) -> int:
        return self.partition_

    def offset(self) -> int:
        return self.offset_

    def key(self) -> bytes | None:
        return self.key_

    def value(self) -> bytes | None:
        return self.value_

    def headers(self) -> list[tuple[str, bytes | None]] | None:
        return self.headers_

    def timestamp(self) -> tuple[int, int]:
        return self.timestamp_
