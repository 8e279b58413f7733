"""The `sda` services: coordinator, clerk and the participant client, over MQTT and SQLite."""
