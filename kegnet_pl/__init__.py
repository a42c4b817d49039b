"""kegnet-pl: data-free knowledge extraction and model compression (KegNet, NeurIPS 2019) on PyTorch Lightning."""

__version__ = "0.1.0"
