"""From a ticket to a smaller, faster model: compaction, sparse (CSR) export, saving and benchmarking.

Pure torch (no Lightning): :func:`compact` (a smaller dense ``nn.Sequential`` with the same outputs),
:func:`compact_resnet` (ResNet-20 with fewer internal block channels, a :class:`CompactResNet`),
:func:`sparsify` (Linear layers as ``torch.sparse_csr`` where measured faster), :func:`save_export` /
:func:`load_export` (safetensors + a JSON architecture; ONNX too when ``onnx`` is installed). The CLI commands
``export`` and ``benchmark`` are in :mod:`lightning_lottery.export.commands`.
"""

from lightning_lottery.export.compact import compact
from lightning_lottery.export.layers import Select, SparseLinear, UnsupportedModelError
from lightning_lottery.export.resnet import CompactResNet, compact_resnet
from lightning_lottery.export.sparse import sparsify

__all__ = ["CompactResNet", "Select", "SparseLinear", "UnsupportedModelError", "compact", "compact_resnet", "sparsify"]
