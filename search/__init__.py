"""The orchestrator: an Optuna multi-objective study driving Ray workers, tracked in MLflow."""
