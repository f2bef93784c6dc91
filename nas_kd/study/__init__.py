"""The Optuna study behind a search: its storage, the record format it keeps, its Pareto front."""
