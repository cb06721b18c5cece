"""Storage: the relational database (SQLite or PostgreSQL) and the KV store (embedded or Valkey)."""
