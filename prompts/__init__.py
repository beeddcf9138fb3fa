"""Versioned prompt files and their loader (``prompts/<name>/<version>.yaml``)."""
