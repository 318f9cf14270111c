"""Sweep stage: the `quantfid-sweep` Hydra app, its job wrapper and the tracking callback."""

from quantfid.sweep.noise import quiet_known_noise

quiet_known_noise()  # before anything below imports torchao (quantfid.sweep.noise says what and why)

from quantfid.sweep import corpus_sources  # noqa: E402,F401  (registers the task_prompts corpus source)
