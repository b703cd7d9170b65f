"""stagewise: staged fine-tuning that learns a new task without forgetting the old ones."""

import logging

__version__ = "0.1.0"

# bitsandbytes warns on import when the optional `kernels` package (a faster CPU 4-bit kernel) is
# missing; it falls back to its own kernel, so the warning only adds noise to every run.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
