"""A study where it lives: its settings (what to search and where it runs), the Optuna
storage it is kept in, the checks run before anything is created, the attributes the engine
keeps on it, and its Pareto front. Imports :mod:`search.core` only."""
