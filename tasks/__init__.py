"""How does one unit of work run?

Native operations (signatures, templates, metrics), running a DSPy module over a batch, retrieval,
optimization, evaluation, payload codecs and LM construction. Each lives in its own submodule and is
imported from there (``from tasks.signatures import parse_signature``); this package imports nothing
heavy on its own.
"""

import dspex.bootstrap  # noqa: F401  (defaults the Prefect and LiteLLM environment before they load)

__all__: list[str] = []
