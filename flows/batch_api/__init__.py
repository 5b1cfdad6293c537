"""How do a step's LM calls go through a provider's batch API, without holding a worker?

Batch mode (`mode`) runs a module step's rows until each needs an LM answer, sends every row's
request in one provider batch per round, and goes on when the answers come back; the job's saved
state (`jobs`), ending the flow run and re-checking it later (`recheck`), and the learned batch
waits kept apart from the online durations (`estimates`). The provider client is `tasks.lm.batch_api`.
"""

# Import the module you need (``from flows.batch_api.<module> import ...``): this file imports nothing,
# so importing one module never loads its siblings, and no package-level circle can form.
__all__ = ["estimates", "jobs", "mode", "recheck"]
