"""Every error DSPex raises, in one tree.

Each error has a stable ``code`` (for logs, artifacts and API answers) and subclasses the builtin a
caller would reach for (``ValueError`` for bad input, ``LookupError`` for a missing name,
``RuntimeError`` for a failure while running), so ``except ValueError`` keeps working.

    DSPexError (Exception)
    ├── ConfigurationError (ValueError) .............. bad settings or environment
    │   └── LMConfigurationError ..................... an LM that cannot be built (no key, bad model)
    ├── RegistryError
    │   ├── UnknownModuleError (LookupError) ......... no such module; suggests close names
    │   ├── InvalidModuleInfoError (ValueError) ...... a malformed registry record
    │   ├── RegistryQueryError (ValueError) .......... a bad query argument (input size, pool, context)
    │   └── RegistryPersistenceError ................. the registry file is corrupt or unwritable
    ├── SignatureError (ValueError) .................. a signature string that does not parse
    ├── InputValidationError (ValueError) ............ inputs that do not fit a signature (all fields)
    ├── TemplateError (ValueError) ................... a template that does not compile or render
    │   └── TemplateSecurityError .................... a sandbox escape attempt
    ├── MetricError (ValueError) ..................... a metric given inputs it cannot score
    ├── PayloadError (ValueError) .................... a payload that cannot be written or read
    │   ├── PayloadNotFoundError ..................... nothing at the payload's uri
    │   ├── PayloadCorruptError ...................... truncated, corrupt, or checksum mismatch
    │   ├── PayloadFormatError ....................... an object or file of a kind we do not handle
    │   └── PayloadAccessError ....................... a read outside the configured roots
    ├── PipelineSpecError (ValueError) ............... an invalid pipeline; names the step
    │   ├── UntrustedImportError ..................... an import path that may not be imported
    │   ├── SpecLimitError ........................... a YAML/JSON document past a size/depth/node limit
    │   └── VariableError ............................ a bad pipeline variable or value; names both
    ├── RetrievalError (ValueError) .................. a bad corpus, query or k for a retriever
    ├── RetrieverServerError (RuntimeError) .......... a retrieval server failed or answered badly
    ├── SandboxUnavailableError (RuntimeError) ....... generated code but no sandbox to run it in
    ├── PoolUnavailableError (RuntimeError) .......... a pool that cannot take work (fallback policy)
    ├── DispatchError (RuntimeError) ................. a batch that could not reach a pool and back
    ├── LMBatchError (RuntimeError) .................. a provider batch (issue 21) that cannot go on
    │   ├── LMBatchUnsupportedError .................. the LM/provider has no batch API (nothing sent)
    │   └── LMBatchPendingError ...................... a submitted batch is not answered yet (a signal)
    ├── StepExecutionError (RuntimeError) ............ a step failed; carries what was completed
    ├── ProgramOutputError (TypeError) ............... a user program returned what no row can hold
    ├── RunStoppedError (RuntimeError) ............... a run that stopped early; carries what was completed
    │   ├── RunInterruptedError ...................... SIGINT/SIGTERM: the flow run ends Cancelled
    │   └── BudgetExceededError ...................... the next batch would pass max_cost_usd
    └── SessionError ................................. a stateful session (flows.sessions.session)
        ├── SessionNotFoundError (LookupError) ....... no session with that id
        ├── SessionExpiredError (LookupError) ........ its TTL passed, or it was closed
        ├── SessionBusyError (RuntimeError) .......... another turn held it past the wait limit
        └── SessionStoreError (RuntimeError) ......... the session database failed or is corrupt

`is_retryable` says whether an error is worth retrying (transient LM errors as DSPy classifies them,
and our own errors flagged retryable); `retry_condition` plugs it into Prefect's
``retry_condition_fn``.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BudgetExceededError",
    "ConfigurationError",
    "DSPexError",
    "DispatchError",
    "InputValidationError",
    "InvalidModuleInfoError",
    "LMBatchAmbiguousError",
    "LMBatchError",
    "LMBatchPendingError",
    "LMBatchUnsupportedError",
    "LMConfigurationError",
    "MetricError",
    "PayloadAccessError",
    "PayloadCorruptError",
    "PayloadError",
    "PayloadFormatError",
    "PayloadNotFoundError",
    "PipelineSpecError",
    "PoolUnavailableError",
    "ProgramOutputError",
    "RegistryError",
    "RegistryPersistenceError",
    "RegistryQueryError",
    "RetrievalError",
    "RetrieverServerError",
    "RunInterruptedError",
    "RunStoppedError",
    "SandboxUnavailableError",
    "SessionBusyError",
    "SessionError",
    "SessionExpiredError",
    "SessionNotFoundError",
    "SessionStoreError",
    "SignatureError",
    "SpecLimitError",
    "StepExecutionError",
    "TemplateError",
    "TemplateSecurityError",
    "UnknownModuleError",
    "UntrustedImportError",
    "VariableError",
    "is_retryable",
    "retry_condition",
]


class DSPexError(Exception):
    """Base of every DSPex error.

    Attributes:
        code: A stable, machine-readable identifier of the error kind.
        retryable: Whether retrying the same operation may succeed.
    """

    code: str = "dspex_error"
    retryable: bool = False

    def __init__(self, *args: Any) -> None:
        from dspex.redact import redact  # the message reaches logs, states and artifacts: mask secrets

        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


class ConfigurationError(DSPexError, ValueError):
    """Settings or environment that cannot work (a bad ``DSPEX_*`` value, a missing folder)."""

    code = "configuration_error"


class LMConfigurationError(ConfigurationError):
    """An LM that cannot be built from the settings (no API key, unknown model)."""

    code = "lm_configuration_error"


class RegistryError(DSPexError):
    """Base of module-registry errors."""

    code = "registry_error"


class UnknownModuleError(RegistryError, LookupError):
    """A module name the registry does not know.

    Attributes:
        name: The name that was asked for.
        suggestions: Registered names close to it, best first.
    """

    code = "unknown_module"

    def __init__(self, name: str, suggestions: list[str] | None = None) -> None:
        self.name = name
        self.suggestions = list(suggestions or [])
        hint = f"; did you mean {', '.join(repr(s) for s in self.suggestions)}?" if self.suggestions else ""
        super().__init__(f"unknown module {name!r}{hint}")

    def __str__(self) -> str:  # LookupError would otherwise repr() the message
        return str(self.args[0])


class InvalidModuleInfoError(RegistryError, ValueError):
    """A registry record that does not validate (bad pool, negative duration, unknown key)."""

    code = "invalid_module_info"


class RegistryQueryError(RegistryError, ValueError):
    """A registry query with a bad argument: an unknown input size, pool, category or routing context."""

    code = "registry_query_error"


class RegistryPersistenceError(RegistryError):
    """The registry file is corrupt or cannot be written; names the file and any backup kept."""

    code = "registry_persistence_error"


class SignatureError(DSPexError, ValueError):
    """A DSPy signature string that does not parse.

    Attributes:
        text: The signature text.
        column: 1-based column of the problem, when known.
        hint: A one-line suggestion.
    """

    code = "signature_error"

    def __init__(self, message: str, *, text: str = "", column: int | None = None, hint: str = "") -> None:
        self.text = text
        self.column = column
        self.hint = hint
        where = f" at column {column}" if column is not None else ""
        full = f"{message}{where}"
        if hint:
            full += f" (hint: {hint})"
        super().__init__(full)


class InputValidationError(DSPexError, ValueError):
    """Inputs that do not fit a signature; ``errors`` lists every bad field at once.

    Attributes:
        errors: One ``{"field", "message", "input"}`` mapping per bad field.
    """

    code = "input_validation_error"

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        self.errors = list(errors or [])
        super().__init__(message)


class TemplateError(DSPexError, ValueError):
    """A template that does not compile, or a render with missing variables."""

    code = "template_error"


class TemplateSecurityError(TemplateError):
    """A template that tried to leave the sandbox (``__class__``, ``__globals__``, ...)."""

    code = "template_security_error"


class MetricError(DSPexError, ValueError):
    """A metric given inputs it cannot score (mismatched lengths, wrong types, unknown metric)."""

    code = "metric_error"


class PayloadError(DSPexError, ValueError):
    """A payload that cannot be written or read.

    Attributes:
        uri: Where the payload lives, when known.
    """

    code = "payload_error"

    def __init__(self, message: str, *, uri: str | None = None) -> None:
        self.uri = uri
        super().__init__(f"{message} [{uri}]" if uri else message)


class PayloadNotFoundError(PayloadError):
    """Nothing is stored at the payload's uri."""

    code = "payload_not_found"


class PayloadCorruptError(PayloadError):
    """A payload that is truncated, corrupt, or does not match its checksum."""

    code = "payload_corrupt"


class PayloadFormatError(PayloadError):
    """An object or file of a kind the payload codecs do not handle."""

    code = "payload_format"


class PayloadAccessError(PayloadError):
    """A read outside the configured roots (payload root, ``DSPEX_DATA_ROOTS``) or schemes; the
    message never says whether, or how big, the file is."""

    code = "payload_access_denied"


class PipelineSpecError(DSPexError, ValueError):
    """An invalid pipeline spec.

    Attributes:
        step: The name of the offending step, when there is one.
    """

    code = "pipeline_spec_error"

    def __init__(self, message: str, *, step: str | None = None) -> None:
        self.step = step
        super().__init__(f"step {step!r}: {message}" if step else message)


class UntrustedImportError(PipelineSpecError):
    """An import path a spec or record may not import: a standard-library or untrusted root, or an
    object that is not what it must be (a user program that is not a ``dspy.Module``)."""

    code = "untrusted_import"


class SpecLimitError(PipelineSpecError):
    """A YAML or JSON document (a spec, a variables file, a UI form's value) past one of the loader's
    limits (`dspex.documents`): too many bytes, too deeply nested, or too many nodes once YAML aliases
    are expanded (the "billion laughs" shape).

    Attributes:
        limit: The setting that was passed (``spec_max_bytes``, ``spec_max_depth``, ``spec_max_nodes``).
        value: That setting's value.
    """

    code = "spec_limit_exceeded"

    def __init__(self, message: str, *, limit: str, value: int) -> None:
        self.limit = limit
        self.value = value
        super().__init__(message)


class VariableError(PipelineSpecError):
    """A pipeline variable that is malformed, undefined, unused, or given a value out of its range.

    Attributes:
        variable: The variable's name, when one is at fault.
        step: The step(s) referencing it, when known.
    """

    code = "variable_error"

    def __init__(self, message: str, *, variable: str | None = None, step: str | None = None) -> None:
        self.variable = variable
        self.step = step
        where = " ".join(
            part
            for part in (f"variable {variable!r}" if variable else "", f"step {step!r}" if step else "")
            if part
        )
        DSPexError.__init__(self, f"{where}: {message}" if where else message)


class RetrievalError(DSPexError, ValueError):
    """Bad retrieval input: an empty or malformed corpus, a query that is not a string, ``k < 1``."""

    code = "retrieval_error"


class RetrieverServerError(DSPexError, RuntimeError):
    """A retrieval server (ColBERTv2) that could not be reached, failed, or answered malformed data.

    Attributes:
        url: The server's URL.
        status: The HTTP status, when there was an answer.
        retryable: True for connection errors, timeouts, 429 and 5xx answers; False otherwise.
    """

    code = "retriever_server_error"

    def __init__(self, message: str, *, url: str, status: int | None = None, retryable: bool = False) -> None:
        self.url = url
        self.status = status
        self.retryable = retryable
        super().__init__(f"{message} [{url}]")


class SandboxUnavailableError(DSPexError, RuntimeError):
    """A module that runs generated code, with no sandbox available to run it in."""

    code = "sandbox_unavailable"


class PoolUnavailableError(DSPexError, RuntimeError):
    """A pool that cannot take work: capacity zero, circuit open, or no live worker."""

    code = "pool_unavailable"

    def __init__(self, pool: str, reason: str) -> None:
        self.pool = pool
        self.reason = reason
        super().__init__(f"pool {pool!r} cannot take work: {reason}")


class DispatchError(DSPexError, RuntimeError):
    """A batch that could not be dispatched to a pool, or whose run did not come back."""

    code = "dispatch_error"
    retryable = True


class LMBatchError(DSPexError, RuntimeError):
    """A provider batch (OpenAI's ``/v1/files`` + ``/v1/batches``, Anthropic's ``/v1/messages/batches``,
    `flows.batch_api.mode`) that cannot go on: the provider refused an upload or a batch, or answered
    with something that is not a batch."""

    code = "lm_batch_error"
    retryable = True


class LMBatchUnsupportedError(LMBatchError):
    """Batch mode was asked for, but the LM or its provider has no batch API (an offline LM, a custom
    client, a server answering 404 on ``/v1/batches`` or ``/v1/messages/batches``); raised before any
    request is sent."""

    code = "lm_batch_unsupported"
    retryable = False


class LMBatchAmbiguousError(LMBatchError):
    """A round whose run stopped while submitting it, and more than one provider batch that could be
    the one it submitted (Anthropic's Message Batches carry no metadata to tell them apart,
    `tasks.lm.anthropic_batch`): nothing is submitted again until the duplicates are cancelled.

    Attributes:
        batch_ids: The batches that fit.
    """

    code = "lm_batch_ambiguous"
    retryable = False

    def __init__(self, message: str, *, batch_ids: list[str]) -> None:
        self.batch_ids = list(batch_ids)
        super().__init__(message)


class LMBatchPendingError(LMBatchError):
    """A submitted batch is not answered yet and this run does not wait for it (a deployment run): the
    run records where it stopped and a scheduled re-check picks it up (`flows.batch_api.mode`).

    Attributes:
        job: The batch job's id (its state under ``<payload_url>/lm_batches/<job>``).
        batch_id: The provider's batch id.
        check_in_s: Seconds until the next check is due.
    """

    code = "lm_batch_pending"

    def __init__(self, message: str, *, job: str, batch_id: str, check_in_s: float) -> None:
        self.job = job
        self.batch_id = batch_id
        self.check_in_s = check_in_s
        super().__init__(message)


class StepExecutionError(DSPexError, RuntimeError):
    """A pipeline step that failed.

    Attributes:
        step: The step's name.
        completed: How many rows were completed (and kept) before the failure.
        partial_ref: A JSON-able reference to the completed rows, when any were stored.
    """

    code = "step_execution_error"

    def __init__(
        self, message: str, *, step: str, completed: int = 0, partial_ref: dict[str, Any] | None = None
    ) -> None:
        self.step = step
        self.completed = completed
        self.partial_ref = partial_ref
        super().__init__(f"step {step!r}: {message}")


class ProgramOutputError(DSPexError, TypeError):
    """A user program's ``forward`` returned a value that is not a ``dspy.Prediction``, a dict, a
    pydantic model or a ``str`` (issue 24); the row fails with this error, naming the type."""

    code = "program_output_error"


class RunStoppedError(DSPexError, RuntimeError):
    """A run that stopped dispatching before every row ran; what it completed is kept.

    Attributes:
        completed: Rows that completed every step.
        not_attempted: Rows that never ran (a re-run with resume computes only those, and failed ones).
        partial_ref: A JSON-able `PayloadRef` of the output written so far (every row, the unfinished
            ones with their ``_error``).
        summary: The run's summary (JSON), when one was written.
    """

    code = "run_stopped"

    def __init__(
        self,
        message: str,
        *,
        completed: int = 0,
        not_attempted: int = 0,
        partial_ref: dict[str, Any] | None = None,
        summary: dict[str, Any] | None = None,
    ) -> None:
        self.completed = completed
        self.not_attempted = not_attempted
        self.partial_ref = partial_ref
        self.summary = summary
        super().__init__(message)


class RunInterruptedError(RunStoppedError):
    """A run stopped by SIGINT or SIGTERM (its flow run ends Cancelled).

    Attributes:
        signal: The signal's name (``SIGINT``, ``SIGTERM``).
    """

    code = "run_interrupted"

    def __init__(self, message: str, *, signal: str, **kwargs: Any) -> None:
        self.signal = signal
        super().__init__(message, **kwargs)


class BudgetExceededError(RunStoppedError):
    """A run that stopped dispatching because its projected cost would pass ``max_cost_usd``.

    Attributes:
        max_cost_usd: The budget.
        spent_usd: What the run had spent when it stopped.
    """

    code = "budget_exceeded"

    def __init__(self, message: str, *, max_cost_usd: float, spent_usd: float, **kwargs: Any) -> None:
        self.max_cost_usd = max_cost_usd
        self.spent_usd = spent_usd
        super().__init__(message, **kwargs)


class SessionError(DSPexError):
    """A stateful session that cannot take a turn (`flows.sessions.session`).

    Attributes:
        session_id: The session's id.
    """

    code = "session_error"

    def __init__(self, message: str, *, session_id: str) -> None:
        self.session_id = session_id
        super().__init__(f"session {session_id!r}: {message}")


class SessionNotFoundError(SessionError, LookupError):
    """No session with that id in the store (never opened, or removed by cleanup)."""

    code = "session_not_found"


class SessionExpiredError(SessionError, LookupError):
    """A session whose TTL has passed or that was closed; its history is no longer extended."""

    code = "session_expired"


class SessionBusyError(SessionError, RuntimeError):
    """Another turn held the session longer than this turn was willing to wait."""

    code = "session_busy"
    retryable = True


class SessionStoreError(SessionError, RuntimeError):
    """The session database failed, or a stored session does not decode."""

    code = "session_store_error"


def is_retryable(error: BaseException) -> bool:
    """Whether retrying the operation that raised ``error`` may succeed.

    Transient LM errors are classified by DSPy's own ``dspy.is_retryable_lm_error``; DSPex errors by
    their ``retryable`` flag; bad input never is.

    Args:
        error: The exception to classify.
    """
    from dspy.utils.exceptions import is_retryable_lm_error

    seen: set[int] = set()
    current: BaseException | None = error
    # Walk the cause chain (a wrapped LM error is still transient); `seen` guards against cycles.
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DSPexError):
            return current.retryable
        if isinstance(current, Exception) and is_retryable_lm_error(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def retry_condition(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry a failed task run only for retryable errors.

    Args:
        task: The Prefect task.
        task_run: The failed task run.
        state: Its Failed state; its exception is classified with `is_retryable`.
    """
    try:
        state.result()
    except Exception as exc:  # the state's own exception, re-raised by Prefect
        return is_retryable(exc)
    return False
