"""API keys: ``Authorization: Bearer gch_…`` for scripts and OpenAI-compatible clients."""
