"""The engine: the driver loop (:class:`search.engine.driver.Search`), the candidates it moves
through count -> measure -> train, the executors and jobs that run that work (Ray, or in
process), the caches, the one-driver lease, and MLflow tracking."""
