"""Batch executors: one interface, a local and a remote implementation, one batch function."""

from flows.engine.executors.base import BatchExecutor, BatchRequest, ResultStore
from flows.engine.executors.guard import EndpointGuard, endpoint_of, guard_for
from flows.engine.executors.local import LocalExecutor
from flows.engine.executors.remote import RemoteExecutor
from flows.engine.executors.run import run_batch

__all__ = [
    "BatchExecutor",
    "BatchRequest",
    "EndpointGuard",
    "LocalExecutor",
    "RemoteExecutor",
    "ResultStore",
    "endpoint_of",
    "guard_for",
    "run_batch",
]
