"""Developer tools that a running Gouache does not use: the demo model's training (demo/)
and the check that requirements.lock matches pyproject.toml (lock.py)."""
