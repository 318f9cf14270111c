"""quantfid: does a cheap fidelity number (KLD, PPL ratio, top-1) tell you which quant to ship?"""

__version__ = "0.1.0"
