"""Who is calling: API keys (Bearer), roles, ownership of jobs, and a write rate limit."""
