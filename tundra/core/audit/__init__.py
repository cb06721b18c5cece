"""The hash-chained, tamper-evident audit log."""
