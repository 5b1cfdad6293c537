"""What exists, and where should it run? The DSPy module registry.

(Filled in by the registry work: `ModuleInfo`, the core catalogue, discovery, the thread-safe store,
duration estimates and routing recommendations.)
"""

__all__: list[str] = []
