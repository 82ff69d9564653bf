"""queue endpoints."""
