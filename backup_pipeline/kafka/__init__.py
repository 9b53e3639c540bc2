"""The Kafka client: librdkafka settings (config), topic administration (admin), and the
questions every side asks a topic -- partitions, watermarks (client)."""
