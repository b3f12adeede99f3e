"""Where planshift keeps things outside Kafka: the licence directory, the Parquet lake, the reports."""
