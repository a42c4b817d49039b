"""Model compression for KegNet students: Tucker-2 decomposition of layers, with ranks from EVBMF or a spec.

No Lightning in here: the functions take and return plain ``nn.Module`` networks.
"""

from kegnet_pl.compression.evbmf import EVBMFResult, evbmf, evbmf_rank
from kegnet_pl.compression.spec import (
    PAPER_EVBMF_RANKS,
    PRESETS,
    CompressionReport,
    LayerReport,
    compress,
    compress_with_report,
    get_preset,
    parameter_count,
)
from kegnet_pl.compression.tucker import factorize_linear, tucker2, tucker2_conv, tucker2_layer

__all__ = [
    "PAPER_EVBMF_RANKS",
    "PRESETS",
    "CompressionReport",
    "EVBMFResult",
    "LayerReport",
    "compress",
    "compress_with_report",
    "evbmf",
    "evbmf_rank",
    "factorize_linear",
    "get_preset",
    "parameter_count",
    "tucker2",
    "tucker2_conv",
    "tucker2_layer",
]
