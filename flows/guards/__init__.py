"""What keeps a run's LM calls within bounds, and its finished work from being lost?

Per endpoint: rate limits (`ratelimit`) and a circuit breaker (`circuit`). Per run: a cost budget
(`budget`), clean stops on signals (`interrupts`), the batch-result store that resume reads
(`resume`), reserved row fields and the output always stored (`safekeeping`), and runs whose process
died marked Crashed (`crashed`). The engine (`flows.engine`) applies them; none of them runs steps.
"""

# Import the module you need (``from flows.guards.<module> import ...``): this file imports nothing,
# so importing one module never loads its siblings, and no package-level circle can form.
__all__ = ["budget", "circuit", "crashed", "interrupts", "ratelimit", "resume", "safekeeping"]
