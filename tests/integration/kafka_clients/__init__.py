"""Kafka clients (kcat, confluent-kafka, kafka-python, aiokafka) against raftmq's Kafka listener."""
