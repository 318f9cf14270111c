"""GGUF: the quants people ship, made by llama.cpp itself and run through llama.cpp's kernels or transformers.

- :mod:`.export`: the reference written as a GGUF file (``llama`` and ``qwen3`` architectures; BPE vocabulary).
- :mod:`.imatrix`: an importance matrix from the calibration corpus, in the GGUF imatrix format llama.cpp reads.
- :mod:`.quantize`: llama.cpp's quantizer (llama-cpp-python) in a child process, the file cache, file facts.
- :mod:`.runtime`: ``llama_cpp`` (llama.cpp's CPU kernels behind a causal-LM surface) and ``transformers``
  (dequantized) runtimes.
- :mod:`.load`: a GGUF file as a verified quant (used by the ``gguf`` and ``gguf_file`` backends).

Heavy and optional libraries (``gguf``, ``llama_cpp``) are imported inside the functions that need them.
"""
