"""How does a pipeline run?

The spec (`spec`: steps, variables resolved), the core that runs the steps over rows (`core`, on the
`context` it carries), the router that picks each step's pool, timeout and batch size (`router`),
the two execution modes (`modes`: local `pools` or `distributed` work pools, through one executor
interface in `executors`), pipelined chunks (`streaming`), the ``run-step`` flow a work pool runs
(`step_runner`), what a run learns (`learning`) and what it needs to stop and resume (`run_control`).
"""

# Import the module you need (``from flows.engine.<module> import ...``): this file imports nothing,
# so importing one module never loads its siblings, and no package-level circle can form.
__all__ = [
    "context",
    "core",
    "distributed",
    "executors",
    "forms",
    "learning",
    "modes",
    "ownership",
    "params",
    "pools",
    "router",
    "run_control",
    "spec",
    "step_runner",
    "streaming",
]
