"""Hardware-aware architecture search of LITv2: an Optuna multi-objective study driving Ray
workers, tracked in MLflow. The sub-packages, lowest layer first (no import runs upward):
``core``, ``study``, ``training``, ``engine``, ``deploy``, ``bench``, ``cli`` (README,
"Architecture")."""
