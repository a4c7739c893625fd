"""Developer tools that are not part of a running Gouache: the demo model's training."""
