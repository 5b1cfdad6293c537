"""Where and when do flows run?

Work-pool setup, ``serve`` for the embedded default, worker helpers, the shared local server and
warm runner (`deployments.local`), and the ``dspex`` CLI.

Nothing is imported here: the ``dspex`` console script (`deployments.console`) must hand a command
to the warm runner before anything defaults Prefect's environment or loads Prefect, so each module
that loads Prefect imports `dspex.bootstrap` itself (the CLI's ``__init__`` for all its commands).
"""

__all__: list[str] = []
