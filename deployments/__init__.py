"""Where and when do flows run?

Work-pool setup, ``serve`` for the embedded default, worker helpers, and the ``dspex`` CLI.
"""

import dspex.bootstrap  # noqa: F401  (defaults the Prefect environment before Prefect loads)

__all__: list[str] = []
