"""MLflow plugins of quantfid, installed through entry points (see pyproject.toml)."""
