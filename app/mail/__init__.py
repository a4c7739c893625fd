"""Email: SMTP when a host is set, otherwise an outbox folder of .eml files (the embedded default)."""
