"""Settings: privacy and retention, edited through the store."""
