"""Keep torch's known deprecation warnings out of learners' way, without hiding the lesson.

torch 2.14.1 still runs eager-mode quantization (torch.ao.quantization) but warns, on nearly
every call, that it is deprecated, that `reduce_range` will be, and that quantized dtypes are.
Notebook 00 shows these warnings once in full and explains them; every later notebook calls
`quiet_deprecations()` so that each one is not repeated dozens of times per cell. Any other
warning still shows.
"""

import warnings

KNOWN_DEPRECATIONS = (
    # (message regex, category): matched at the start of the warning's message.
    (r"torch\.ao\.quantization is deprecated", DeprecationWarning),
    (r"Please use quant_min and quant_max to specify the range for observers", UserWarning),
    (r"torch\.quantize_per_tensor, torch\.quantize_per_channel and other quantized tensor creation", UserWarning),
)


def quiet_deprecations() -> list[str]:
    """Ignore the known deprecation warnings from here on; returns their messages for the record."""
    for message, category in KNOWN_DEPRECATIONS:
        warnings.filterwarnings("ignore", message=message, category=category)
    return [message for message, _ in KNOWN_DEPRECATIONS]
