"""qlib: the helper package of the course on PyTorch post-training static quantization.

The notebooks import it; every piece of logic they would otherwise repeat lives here and is
tested by pytest against PyTorch itself.
"""

__version__ = "0.1.0"
