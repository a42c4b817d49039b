"""kegnet-pl: data-free knowledge extraction and model compression (KegNet, NeurIPS 2019) on PyTorch Lightning."""

import logging

__version__ = "0.1.0"

# torch.utils.cpp_extension, imported by torch.utils.benchmark (the pipeline's latency figures), warns "No CUDA runtime
# is found" on a machine with a CUDA toolkit and no GPU. Nothing here builds extensions: the line would only puzzle.
logging.getLogger("torch.utils.cpp_extension").addFilter(lambda record: "No CUDA runtime" not in str(record.msg))
