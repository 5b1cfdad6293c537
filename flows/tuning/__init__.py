"""Which choices make a pipeline work best?

Named knobs that steps reference as ``${name}`` (`variables`), adaptive selection among candidate
steps, batch by batch, by a Thompson-sampling bandit (`select`), and the trial records and results of a
``tune`` search (`trials`; the ``tune`` flow itself is `flows.tune`).
"""

# Import the module you need (``from flows.tuning.<module> import ...``): this file imports nothing,
# so importing one module never loads its siblings, and no package-level circle can form.
__all__ = ["select", "trials", "variables"]
