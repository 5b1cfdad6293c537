"""Batch executors: one interface, a local and a remote implementation, one batch function."""

from flows.executors.base import BatchExecutor, BatchRequest, ResultStore
from flows.executors.guard import EndpointGuard, endpoint_of, guard_for
from flows.executors.local import LocalExecutor
from flows.executors.remote import RemoteExecutor
from flows.executors.run import run_batch

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
