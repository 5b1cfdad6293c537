"""What is configured, and what can go wrong: the core every package shares.

`dspex` holds the settings (`DSPEX_*` through pydantic-settings), the one exceptions module, and
the bootstrap that makes the embedded Prefect default quiet and project-local. It imports no
Prefect and no DSPy, so every other package may import it first.
"""

from dspex.exceptions import DSPexError, is_retryable
from dspex.settings import Settings, get_settings

__version__ = "0.1.0"

__all__ = ["DSPexError", "Settings", "__version__", "get_settings", "is_retryable"]
