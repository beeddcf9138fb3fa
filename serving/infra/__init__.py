"""Infrastructure every wing stands on: the state store (SQLite or Postgres) and its migrations, the Redis link,
the clock, background workers, file hashes. Knows nothing of answers."""
