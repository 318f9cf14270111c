"""MLflow plugins shipped with quantfid, registered by entry points in pyproject.toml.

- ``mlflow_plugins.context.QuantfidRunContextProvider`` (group ``mlflow.run_context_provider``): tags every run started
  with the fluent ``mlflow.start_run`` with the git commit and the versions of the packages that shape a result.
- ``mlflow_plugins.cas.ContentAddressedArtifactRepository`` (group ``mlflow.artifact_repository``, scheme ``cas``):
  stores each distinct artifact once, so reference caches and reference outcome tables logged by every sweep of a team
  cost their bytes once. Works client-side (experiment artifact location ``cas:///path``) and behind the server's
  artifact proxy (``mlflow server --serve-artifacts --artifacts-destination cas:///path``).
"""
