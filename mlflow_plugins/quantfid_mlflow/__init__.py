"""MLflow plugins of quantfid (the ``quantfid-mlflow-plugins`` distribution, ``mlflow_plugins/pyproject.toml``),
registered by entry points; it depends on MLflow only, so a team server installs it without torch or quantfid.

- ``quantfid_mlflow.context.QuantfidRunContextProvider`` (group ``mlflow.run_context_provider``): tags every run started
  with the fluent ``mlflow.start_run`` with the git commit and the versions of the packages that shape a result.
- ``quantfid_mlflow.cas.ContentAddressedArtifactRepository`` (group ``mlflow.artifact_repository``, scheme ``cas``):
  stores each distinct artifact once, so reference caches and reference outcome tables logged by every sweep of a team
  cost their bytes once. Works client-side (experiment artifact location ``cas:///path``) and behind the server's
  artifact proxy (``mlflow server --serve-artifacts --artifacts-destination cas:///path``).
"""
