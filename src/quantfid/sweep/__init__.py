"""Sweep stage: the `quantfid-sweep` Hydra app, its job wrapper and the tracking callback."""

from quantfid.sweep.noise import quiet_known_noise

quiet_known_noise()  # before anything below imports torchao (quantfid.sweep.noise says what and why)
