"""Structured configs registered with Hydra's ConfigStore before composition: the one home of the defaults that a
config group's YAML files extend (``defaults: [base, _self_]`` plus the keys that differ)."""

from __future__ import annotations

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from quantfid.fidelity.settings import FidelitySettings


def register_configs() -> None:
    """``fidelity/base``: every field of :class:`FidelitySettings` with its default (``conf/fidelity/*.yaml`` extend
    it); typed, so ``fidelity.context=abc`` is refused while composing."""
    node = OmegaConf.structured(FidelitySettings)
    OmegaConf.set_readonly(node, False)  # the dataclass is frozen; a config node must take the YAML's values
    ConfigStore.instance().store(group="fidelity", name="base", node=node)
