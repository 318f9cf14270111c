"""Sweep stage: the `quantfid-sweep` Hydra app, its job wrapper and the tracking callback."""
