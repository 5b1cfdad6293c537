"""How does a DSPy program keep its conversation across calls and processes?

A session (`session`) wraps a program and its history; the history lives in one SQL table
(`store`: SQLite in the project, or any database URL); the ``session-turn`` and
``cleanup-sessions`` flows (`turns`) run a turn from the UI or on a worker, and expire old sessions.
"""

# Import the module you need (``from flows.sessions.<module> import ...``): this file imports nothing,
# so importing one module never loads its siblings, and no package-level circle can form.
__all__ = ["session", "store", "turns"]
