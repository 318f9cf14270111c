"""The bottom layer: the vocabulary every stage shares and nothing else.

- :mod:`quantfid.api.schema`: the tracking contract (tag, param and metric names, artifact paths, outcome columns),
  written by the sweep and read by the analysis.
- :mod:`quantfid.api.variants`: the paper's 14 fidelity variants and the measurement settings that hold them.
- :mod:`quantfid.api.paths`: where the shipped configs, the organism's files and the caches are.
- :mod:`quantfid.api.io`: the atomic file writer every cache uses.
- :mod:`quantfid.api.divergence`: the one token-level KL divergence (torch; only stages import it).

Modules here import nothing from the rest of quantfid, and this package imports none of them eagerly, so the
torch-free analysis can read the schema without paying for torch.
"""
