"""Training BitMamba-2 models for bitmamba-lsp (quantization-aware, CPU, PyTorch).

Modules: :mod:`.corpus` (source-file corpora, license filter, de-duplication, split by file),
:mod:`.data` (byte-level BPE tokenizer, encoding, deterministic batches), :mod:`.model` (PyTorch
BitMamba-2 with QAT BitLinear and a chunked scan), :mod:`.trainer` (the training loop),
:mod:`.export` (to the engine's ``model.bin`` + ``tokenizer.json`` + ``model.json``) and :mod:`.cli`
(``bitmamba train``). Only ``model``, ``trainer`` and ``export`` import torch
(``pip install 'bitmamba-lsp[train]'``); importing this package does not.
"""
