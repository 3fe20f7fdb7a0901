"""The trial queue protocol: Redis key names and message models (pure: no redis import here)."""
