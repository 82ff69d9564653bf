"""Process managers of experiments: dependency release and sweeps, derived from events."""
