"""How do units compose into a pipeline?

The pipeline spec, the engine, the router's execution side, ready-made flows, and the step-runner
flow that a pool executes.
"""

import dspex.bootstrap  # noqa: F401  (defaults the Prefect environment before Prefect loads)

__all__: list[str] = []
