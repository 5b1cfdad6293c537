"""How do CLI commands on one machine share a Prefect server and a process with everything imported?

`deployments.local.server` starts one local Prefect server per project on first use (owner-only,
stopped when idle) for CLI runs and ``dspex ui``; `deployments.local.warm_runner` keeps a process
next to it that has imported Prefect and DSPy, and runs ``dspex run`` for the console script
(`deployments.console`). Neither imports the CLI: the console script hands the runner its entry.
This ``__init__`` imports nothing, so the console script loads only the modules it names.
"""

__all__ = ["server", "warm_runner"]
