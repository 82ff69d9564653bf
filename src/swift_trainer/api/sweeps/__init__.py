"""Sweeps: create, follow, stop and export the results of a hyperparameter search."""
