"""What does a run tell the people watching it?

Prefect events (`events`: the one place that names and emits them), run metrics (`metrics`:
throughput, latency percentiles, error rates, memory) and Prefect artifacts (`artifacts`: estimated
versus actual durations, the summary, progress). Spans of the same runs are `tasks.tracing`'s.
"""

# Import the module you need (``from flows.telemetry.<module> import ...``): this file imports nothing,
# so importing one module never loads its siblings, and no package-level circle can form.
__all__ = ["artifacts", "events", "metrics"]
