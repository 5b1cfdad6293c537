"""Test support: a real OpenAI-compatible server on loopback, and its pytest fixture.

``tests/`` has no ``__init__.py``, so pytest puts ``tests/`` itself on ``sys.path`` and this package
imports as ``support`` (``from support.openai_server import Fault``). The ``openai_server`` context
manager is not re-exported here: the name would shadow the ``support.openai_server`` submodule.
"""

from .openai_server import FakeOpenAIServer, Fault, RecordedRequest, Responder

__all__ = ["FakeOpenAIServer", "Fault", "RecordedRequest", "Responder"]
