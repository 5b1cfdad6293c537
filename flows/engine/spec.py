"""The pipeline spec: a JSON-able description of a pipeline that the Prefect UI renders as a form.

A pipeline is a name and a list of steps. Each step is one of seven kinds, told apart by its head key
(or an explicit ``kind``), so the smallest pipeline reads as plainly as it can::

    {"name": "qa", "steps": [{"module": "dspy.Predict", "signature": "question -> answer"}]}

=============  ===============================  ==============================================
kind           head key                         what it does to each row
=============  ===============================  ==============================================
module         ``module: "dspy.ChainOfThought"``  runs a DSPy module (routed to its pool)
native         ``native: "metric"``               validate / render a template / score a metric
retrieve       ``retrieve: "question"``           adds the top-k passages for the query field
parallel       ``parallel: {branch: [steps]}``    runs branches on the same row, nests results
conditional    ``when: {field, op, value}``       runs ``then`` or ``otherwise``; records the path
map            ``map: "field"``                   runs ``steps`` over each item of a list field
select         ``select: {candidates: [...]}``    runs the candidate a bandit picks, per batch
=============  ===============================  ==============================================

Rows are dicts. A field reference may be dotted (``"cot.answer"``) to read what a parallel branch
nested under its name. Validation happens when the spec is built, before any LM call: unknown
modules, signatures that do not parse, duplicate step names, and (when ``inputs`` is declared) a
field a step needs that nothing produces all fail with the step's name in the message.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    Tag,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from dspex.documents import check_bounds
from dspex.exceptions import PipelineSpecError, SignatureError, UnknownModuleError, VariableError
from dspex.imports import is_import_path
from flows.engine.forms import FormUnion
from flows.tuning.variables import (
    Variable,
    allow_reference,
    check_module_choices,
    check_variable_names,
    default_values,
    references,
    substitute,
    validate_values,
)

__all__ = [
    "ConditionalStep",
    "MapStep",
    "ModuleStep",
    "NativeStep",
    "ParallelStep",
    "PipelineSpec",
    "Predicate",
    "RetrieveStep",
    "SelectOptions",
    "SelectStep",
    "Step",
    "check_overwrites",
    "iter_steps",
    "resolve_spec",
]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class _StepBase(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    name: str | None = Field(
        default=None,
        description="Unique step name (letters, digits, _ and -); derived from the step when omitted.",
    )

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str | None) -> str | None:
        if value is not None and not _NAME.match(value):
            raise ValueError(f"step name {value!r} must match {_NAME.pattern}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _drop_other_kinds_blank_fields(cls, data: Any) -> Any:
        # The UI's step form (flows/engine/forms.py) shows the fields of every kind and submits the ones a
        # person left alone as blanks: drop those; any *filled* foreign field is still an error.
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if (k in cls.model_fields and k != "kind") or not _blank(v)}
        return data

    def default_name(self) -> str:
        """The name this step gets when the spec does not give one."""
        raise NotImplementedError

    def produces(self) -> list[str]:
        """Top-level row fields this step adds."""
        raise NotImplementedError

    def needs(self) -> list[str]:
        """Row fields (top-level names) this step reads."""
        raise NotImplementedError


def _check_field(value: str) -> str:
    if not _FIELD.match(value):
        raise ValueError(f"field reference {value!r} is not a (dotted) identifier")
    return value


def _root(field: str) -> str:
    return field.split(".", 1)[0]


class ModuleStep(_StepBase):
    """Run a DSPy module over every row, in batches, on the pool the registry names."""

    kind: Literal["module"] = "module"
    module: str = Field(
        description="A registry name (dspy.Predict, dspy.ChainOfThought, ...) or a registered user "
        "module's import path (pkg.mod:Program)."
    )
    signature: str | None = Field(
        default=None,
        description="DSPy string signature, e.g. 'question, context -> answer'. Required for DSPy's "
        "built-in modules; user programs define their own.",
    )
    instructions: str | None = Field(default=None, description="Instructions for the signature.")
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword options for the module (e.g. max_iters for ReAct, N for BestOfN).",
    )
    inputs: dict[str, str] = Field(
        default_factory=dict,
        description="Signature input name -> row field (dotted allowed); unnamed inputs read the "
        "row field of the same name.",
    )
    outputs: dict[str, str] = Field(
        default_factory=dict,
        description="Signature output name -> row field to write; unnamed outputs keep their name.",
    )
    tools: list[str] = Field(default_factory=list, description="Names of registered tools (ReAct, CodeAct).")
    reward: str | None = Field(
        default=None,
        description="Import path of a registered reward function (BestOfN, Refine).",
    )
    state: str | None = Field(
        default=None,
        description="Saved JSON state of a user program (a path or fsspec URL) to load before running.",
    )
    pool: Literal["general", "optimizer", "gpu"] | None = Field(
        default=None, description="Override the pool the registry recommends."
    )
    batch_size: int | None = Field(
        default=None, ge=1, description="Rows per batch; chosen from the estimate when omitted."
    )
    requests_per_minute: float | None = Field(
        default=None,
        gt=0,
        description="This step's LM request limit (overrides DSPEX_LM_REQUESTS_PER_MINUTE for its calls).",
    )
    tokens_per_minute: float | None = Field(
        default=None,
        gt=0,
        description="This step's LM token limit (overrides DSPEX_LM_TOKENS_PER_MINUTE for its calls).",
    )

    @field_validator("inputs", "outputs")
    @classmethod
    def _valid_mapping(cls, value: dict[str, str]) -> dict[str, str]:
        for field in value.values():
            _check_field(field)
        return value

    def default_name(self) -> str:
        base = self.module.rsplit(":", 1)[-1].rsplit(".", 1)[-1]
        return re.sub(r"(?<!^)(?=[A-Z])", "_", base).lower()

    def signature_spec(self) -> Any:
        """The parsed signature (None for a user program without one)."""
        if self.signature is None:
            return None
        from tasks.signatures import parse_signature

        return parse_signature(self.signature, instructions=self.instructions)

    def produces(self) -> list[str]:
        spec = self.signature_spec()
        names = list(spec.output_names) if spec is not None else []
        if spec is None and ":" in self.module:  # a user program: outputs read from its class (issue 24)
            from tasks.modules import program_output_names  # lazily, as in needs(): it imports dspy

            names = list(program_output_names(self) or ())
        produced = [self.outputs.get(name, name) for name in names]
        return produced + [f for f in self.outputs.values() if f not in produced]

    def needs(self) -> list[str]:
        spec = self.signature_spec()
        if spec is not None:
            names = list(spec.input_names)
        elif ":" in self.module:  # a user program without a signature: its forward()'s parameters
            from tasks.modules import program_input_names

            names = program_input_names(self)
        else:
            names = list(self.inputs)
        return [_root(self.inputs.get(name, name)) for name in names]


class NativeStep(_StepBase):
    """An in-process operation with no LM: validate rows, render a template, or score a metric."""

    kind: Literal["native"] = "native"
    native: Literal["validate", "template", "metric"] = Field(description="Which native operation.")
    signature: str | None = Field(
        default=None, description="validate: the signature whose inputs each row must satisfy."
    )
    template: str | None = Field(
        default=None, description="template: a Jinja2 template over the row's fields (sandboxed)."
    )
    output: str | None = Field(
        default=None, description="template/metric: the row field to write (default: step name)."
    )
    metric: str | None = Field(default=None, description="metric: exact_match, f1 or passage_match.")
    prediction: str = Field(default="answer", description="metric: the row field holding the prediction.")
    gold: str = Field(default="gold", description="metric: the row field holding the gold answer(s).")

    @model_validator(mode="after")
    def _operation_has_its_fields(self) -> NativeStep:
        required = {"validate": "signature", "template": "template", "metric": "metric"}[self.native]
        if getattr(self, required) is None:
            raise ValueError(f"native '{self.native}' needs '{required}'")
        return self

    def default_name(self) -> str:
        return self.metric if self.native == "metric" and self.metric else self.native

    def produces(self) -> list[str]:
        if self.native == "validate":
            return []
        return [self.output or self.name or self.default_name()]

    def needs(self) -> list[str]:
        if self.native == "validate":
            from tasks.signatures import parse_signature

            return list(parse_signature(self.signature or "").input_names)
        if self.native == "metric":
            return [_root(self.prediction), _root(self.gold)]
        return []  # a template's variables are checked when it renders (StrictUndefined)


class RetrieveStep(_StepBase):
    """Add the top-k passages of a corpus for each row's query field (gpu pool)."""

    kind: Literal["retrieve"] = "retrieve"
    retrieve: str = Field(default="question", description="The row field holding the query.")
    k: int = Field(
        default=3,
        ge=1,
        le=100,
        description="Passages per query (or a '${name}' variable reference).",
        json_schema_extra=allow_reference,
    )
    corpus: str | dict[str, Any] = Field(
        default="demo",
        description="'demo' (the bundled corpus), a payload reference (JSON), or a path/URL of a "
        "JSONL/CSV/Parquet corpus with a 'text' column.",
    )
    output: str = Field(default="context", description="Row field for the passages (list of str).")
    backend: Literal["embeddings", "colbertv2"] = Field(
        default="embeddings",
        description="embeddings: the offline MiniLM retriever; colbertv2: a ColBERTv2 server at url.",
    )
    url: str | None = Field(default=None, description="colbertv2: the server URL.")

    @field_validator("retrieve")
    @classmethod
    def _valid_query(cls, value: str) -> str:
        return _check_field(value)

    @model_validator(mode="after")
    def _colbert_needs_url(self) -> RetrieveStep:
        if self.backend == "colbertv2" and not self.url:
            raise ValueError("backend 'colbertv2' needs 'url'")
        return self

    def default_name(self) -> str:
        return "retrieve"

    def produces(self) -> list[str]:
        return [self.output]

    def needs(self) -> list[str]:
        return [_root(self.retrieve)]


class Predicate(BaseModel):
    """A test on one row field."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    field: str = Field(description="The row field (dotted allowed).")
    op: Literal["eq", "ne", "gt", "ge", "lt", "le", "in", "contains", "truthy", "exists"] = "truthy"
    value: Any = Field(default=None, description="The value to compare with (not for truthy/exists).")

    @field_validator("field")
    @classmethod
    def _valid_field(cls, value: str) -> str:
        return _check_field(value)


class ParallelStep(_StepBase):
    """Run branches on the same row; each branch's new fields are nested under its name."""

    kind: Literal["parallel"] = "parallel"
    parallel: dict[str, list[Step]] = Field(description="Branch name -> its steps.")

    @field_validator("parallel")
    @classmethod
    def _branches(cls, value: dict[str, list[Step]]) -> dict[str, list[Step]]:
        if not value:
            raise ValueError("parallel needs at least one branch")
        for branch, steps in value.items():
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", branch):
                raise ValueError(f"branch name {branch!r} must be an identifier")
            if not steps:
                raise ValueError(f"branch {branch!r} has no steps")
        return value

    def default_name(self) -> str:
        return "parallel"

    def produces(self) -> list[str]:
        return list(self.parallel)

    def needs(self) -> list[str]:
        return sorted({f for steps in self.parallel.values() for f in _external_needs(steps)})


class ConditionalStep(_StepBase):
    """Run ``then`` on rows where the predicate holds and ``otherwise`` on the rest."""

    kind: Literal["conditional"] = "conditional"
    when: Predicate = Field(description="The test that picks the branch.")
    then: list[Step] = Field(description="Steps for rows where the test holds.")
    otherwise: list[Step] = Field(default_factory=list, description="Steps for the other rows.")
    path_field: str | None = Field(
        default=None, description="Row field recording the path taken (default: <name>_path)."
    )

    def default_name(self) -> str:
        return "conditional"

    def produces(self) -> list[str]:
        produced = {f for steps in (self.then, self.otherwise) for s in steps for f in s.produces()}
        return [*sorted(produced), self.path_field or f"{self.name or self.default_name()}_path"]

    def needs(self) -> list[str]:
        # The predicate's field is optional: a row without it simply takes 'otherwise' (and 'exists'
        # is false for it), so it is not a field the data must provide (issue 13).
        return sorted({*_external_needs(self.then), *_external_needs(self.otherwise)})


class MapStep(_StepBase):
    """Run ``steps`` over each item of a list field; collect each item's results in a list."""

    kind: Literal["map"] = "map"
    map: str = Field(description="The row field holding a list.")
    item: str = Field(default="item", description="The name each item takes inside the steps.")
    steps: list[Step] = Field(description="Steps run on each item (with the row's other fields).")
    output: str | None = Field(
        default=None, description="Row field for the list of per-item results (default: step name)."
    )
    collect: str | None = Field(
        default=None,
        description="Collect only this field of each item's result; default: a dict of the fields "
        "the steps produced.",
    )

    @field_validator("map")
    @classmethod
    def _valid_map(cls, value: str) -> str:
        return _check_field(value)

    def default_name(self) -> str:
        return "map"

    def produces(self) -> list[str]:
        return [self.output or self.name or self.default_name()]

    def needs(self) -> list[str]:
        inner = set(_external_needs(self.steps)) - {self.item}
        return sorted({_root(self.map), *inner})


class SelectOptions(BaseModel):
    """What a select step chooses between, and how it learns which is best (`flows.tuning.select`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    candidates: list[Step] = Field(
        min_length=2, description="Alternative steps producing the same fields; one runs per batch."
    )
    policy: Literal["bandit"] = Field(
        default="bandit", description="bandit: Thompson sampling over quality per unit of cost."
    )
    metric: str | None = Field(
        default=None,
        description="Native metric (exact_match, f1) or registered callable scoring the sampled rows "
        "against the gold field; None: an LM judge scores them.",
    )
    prediction: str = Field(
        default="answer", description="The row field the candidates produce and the metric scores."
    )
    gold: str = Field(default="gold", description="The row field holding the gold answer (metric only).")
    sample: float = Field(default=0.25, gt=0, le=1, description="Fraction of each batch's rows scored.")
    batch_rows: int = Field(default=8, ge=1, description="Rows per decision (one candidate per batch).")
    cost: Literal["auto", "usd", "tokens", "latency"] = Field(
        default="auto",
        description="Cost unit: usd or tokens from the LM's history, latency from the registry's learned "
        "estimates and measured time; auto picks the first the LM reports.",
    )
    seed: int | None = Field(default=None, description="Seed of the sampler (reproducible decisions).")
    memory: str | None = Field(
        default=None,
        description="Name of the learned state under <DSPEX_HOME>/select/ (default: from the step's "
        "name and candidates).",
    )
    persist: bool = Field(default=True, description="Start from, and save, what earlier runs learned.")

    @field_validator("prediction", "gold")
    @classmethod
    def _valid_fields(cls, value: str) -> str:
        return _check_field(value)


class SelectStep(_StepBase):
    """Run, batch by batch, the candidate step a policy picks; learn which gives most quality per cost."""

    kind: Literal["select"] = "select"
    select: SelectOptions = Field(description="The candidates and the policy.")
    decision_field: str | None = Field(
        default=None, description="Row field naming the candidate that ran (default: <name>_choice)."
    )

    def default_name(self) -> str:
        return "select"

    def produces(self) -> list[str]:
        produced = {f for c in self.select.candidates for f in c.produces()}
        return [*sorted(produced), self.decision_field or f"{self.name or self.default_name()}_choice"]

    def needs(self) -> list[str]:
        inner = {f for c in self.select.candidates for f in _external_needs([c])}
        if self.select.metric is not None:
            inner.add(_root(self.select.gold))
        return sorted(inner)


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str | list | dict) and not value)


def _step_kind(value: Any) -> str | None:
    """Tell a step's kind from its explicit ``kind`` or its (non-blank) head key."""
    if isinstance(value, BaseModel):
        return getattr(value, "kind", None)
    if not isinstance(value, dict):
        return None
    if not _blank(value.get("kind")):
        return str(value["kind"])
    for key, kind in (
        ("module", "module"),
        ("native", "native"),
        ("retrieve", "retrieve"),
        ("parallel", "parallel"),
        ("when", "conditional"),
        ("map", "map"),
        ("select", "select"),
    ):
        if not _blank(value.get(key)):
            return kind
    return None


Step = Annotated[
    Annotated[ModuleStep, Tag("module")]
    | Annotated[NativeStep, Tag("native")]
    | Annotated[RetrieveStep, Tag("retrieve")]
    | Annotated[ParallelStep, Tag("parallel")]
    | Annotated[ConditionalStep, Tag("conditional")]
    | Annotated[MapStep, Tag("map")]
    | Annotated[SelectStep, Tag("select")],
    Discriminator(
        _step_kind,
        custom_error_type="unknown_step_kind",
        custom_error_message="a step needs one of the keys module, native, retrieve, parallel, "
        "when, map or select (or an explicit kind)",
    ),
    FormUnion(),  # anyOf in the JSON schema: Prefect's Run form renders each step kind as a form
]


def _external_needs(steps: list[Any]) -> list[str]:
    """Fields a list of steps reads that the list itself does not produce first."""
    produced: set[str] = set()
    needed: list[str] = []
    for step in steps:
        needed.extend(f for f in step.needs() if f not in produced and f not in needed)
        produced.update(step.produces())
    return needed


def iter_steps(steps: list[Any]) -> list[Any]:
    """Every step in a list, nested ones included, depth first."""
    found: list[Any] = []
    for step in steps:
        found.append(step)
        if isinstance(step, ParallelStep):
            for branch in step.parallel.values():
                found.extend(iter_steps(branch))
        elif isinstance(step, ConditionalStep):
            found.extend(iter_steps(step.then) + iter_steps(step.otherwise))
        elif isinstance(step, MapStep):
            found.extend(iter_steps(step.steps))
        elif isinstance(step, SelectStep):
            found.extend(iter_steps(step.select.candidates))
    return found


def _with_names(steps: list[Any], taken: set[str]) -> list[Any]:
    """Give every unnamed step a unique default name (recursively)."""
    named = []
    for step in steps:
        updates: dict[str, Any] = {}
        if step.name is None:
            base = step.default_name()
            name, n = base, 2
            while name in taken:
                name, n = f"{base}_{n}", n + 1
            updates["name"] = name
        name = updates.get("name", step.name)
        if name in taken and step.name is not None:
            raise PipelineSpecError("duplicate step name", step=name)
        taken.add(name)
        if isinstance(step, ParallelStep):
            updates["parallel"] = {b: _with_names(s, taken) for b, s in step.parallel.items()}
        elif isinstance(step, ConditionalStep):
            updates["then"] = _with_names(step.then, taken)
            updates["otherwise"] = _with_names(step.otherwise, taken)
        elif isinstance(step, MapStep):
            updates["steps"] = _with_names(step.steps, taken)
        elif isinstance(step, SelectStep):
            candidates = _with_names(step.select.candidates, taken)
            updates["select"] = step.select.model_copy(update={"candidates": candidates})
        named.append(step.model_copy(update=updates) if updates else step)
    return named


class PipelineSpec(BaseModel):
    """A pipeline: a name, its steps, and optionally the fields its data provides.

    Example:
        >>> PipelineSpec.model_validate(
        ...     {"name": "qa", "steps": [{"module": "dspy.Predict", "signature": "question -> answer"}]}
        ... ).steps[0].name
        'predict'
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="Pipeline name (used in artifact keys and flow run names).")
    description: str | None = Field(default=None, description="What the pipeline is for.")
    inputs: list[str] | None = Field(
        default=None,
        description="Fields every input row provides. When given, the spec is checked statically "
        "for fields nothing produces; otherwise the data is checked before any LM call.",
    )
    steps: list[Step] = Field(min_length=1, description="The steps, run in order.")
    continue_on_error: bool = Field(
        default=True,
        description="Keep going when rows fail, as dspy.Parallel and dspy.Evaluate do: failed rows are "
        "reported with their error and the others complete, up to max_errors failures; when false, the "
        "first failed row stops the run (completed rows are kept).",
    )
    max_errors: int | None = Field(
        default=None,
        ge=0,
        description="Failed rows the run tolerates under continue_on_error (DSPy's max_errors): one more "
        "stops it as continue_on_error=false does; None: DSPEX_MAX_ERRORS (default 10).",
    )
    lm_batch: bool | list[str] = Field(
        default=False,
        description="Send module steps' LM calls through the provider's batch API (cheaper, answered "
        "within hours; flows.batch_api.mode): true for every module step, or a list of step names.",
    )
    lm_batch_fallback: Literal["retry", "online"] | None = Field(
        default=None,
        description="A request that failed inside a batch: 'retry' in the next round, or 'online'; "
        "None: DSPEX_LM_BATCH_FALLBACK (retry).",
    )
    variables: dict[str, Variable] = Field(
        default_factory=dict,
        description="Named knobs steps reference as '${name}' (int/float ranges, choices); the "
        "defaults make the spec runnable, the tune flow searches them (flows.tuning.variables).",
    )
    # The steps as written, references included, when the spec has variables (`steps` then holds
    # them resolved with the defaults); what the spec serializes, so it round-trips.
    _template: list[Any] | None = PrivateAttr(default=None)

    @model_validator(mode="wrap")
    @classmethod
    def _resolve_defaults(cls, data: Any, handler: ModelWrapValidatorHandler[PipelineSpec]) -> PipelineSpec:
        if isinstance(data, dict):  # a form's or API's JSON, a Python dict: the loader's limits too
            check_bounds(data, source="pipeline spec")
        # References are interpreted only in a spec that declares variables: a resolved spec (none)
        # keeps a literal "${" that an escaped "$${" produced.
        if not isinstance(data, dict) or not data.get("variables"):
            return handler(data)
        raw = [
            s.model_dump(mode="json", by_alias=True) if isinstance(s, BaseModel) else s for s in data["steps"]
        ]
        variables = {
            name: v if isinstance(v, Variable) else Variable.model_validate(v)
            for name, v in (data.get("variables") or {}).items()
        }
        check_variable_names(variables, raw)
        check_module_choices(variables, raw)
        spec = handler({**data, "variables": variables, "steps": substitute(raw, default_values(variables))})
        spec._template = copy.deepcopy(raw)
        return spec

    @model_serializer(mode="wrap")
    def _dump_template(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if self._template is not None and "steps" in data:
            data["steps"] = copy.deepcopy(self._template)
        return data

    def template_steps(self) -> list[Any]:
        """The steps as written (with ``${...}`` references), as JSON-able dicts."""
        if self._template is not None:
            return copy.deepcopy(self._template)
        return [s.model_dump(mode="json", by_alias=True) for s in self.steps]

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"pipeline name {value!r} must match {_NAME.pattern}")
        return value

    @model_validator(mode="after")
    def _validate_pipeline(self) -> PipelineSpec:
        object.__setattr__(self, "steps", _with_names(list(self.steps), set()))
        for step in iter_steps(self.steps):
            _validate_step(step)
        if self.inputs is not None:
            check_overwrites(self.steps, set(self.inputs))  # gold labels a step overwrites (issue 24)
            missing = _first_missing(self.steps, set(self.inputs))
            if missing is not None:
                step_name, field = missing
                raise PipelineSpecError(
                    f"needs field {field!r}, which neither the inputs {sorted(self.inputs)} nor an "
                    "earlier step produce",
                    step=step_name,
                )
        return self

    @model_validator(mode="after")
    def _lm_batch_names_module_steps(self) -> PipelineSpec:
        if isinstance(self.lm_batch, list):
            modules = {str(s.name) for s in iter_steps(self.steps) if isinstance(s, ModuleStep)}
            unknown = sorted(set(self.lm_batch) - modules)
            if unknown:
                raise PipelineSpecError(
                    f"lm_batch names {unknown}, which are not module steps of the pipeline ({sorted(modules)})"
                )
        return self

    def required_inputs(self) -> list[str]:
        """Fields the data must provide: what the steps read that no earlier step produces."""
        return _external_needs(self.steps)

    def step(self, name: str) -> Any:
        """The step called ``name`` (nested ones included)."""
        for step in iter_steps(self.steps):
            if step.name == name:
                return step
        raise KeyError(name)


def _gold_readers(step: Any) -> list[tuple[str, str]]:
    """(step name, field) for each field a step (or one nested in it) reads as gold labels."""
    found = []
    for inner in iter_steps([step]):
        if isinstance(inner, NativeStep) and inner.native == "metric":
            found.append((str(inner.name), _root(inner.gold)))
        elif isinstance(inner, SelectStep) and inner.select.metric is not None:
            found.append((str(inner.name), _root(inner.select.gold)))
    return found


def _surely_produces(step: Any) -> bool:
    """Whether a step's ``produces()`` is certain: not read off a user program's class (issue 24)."""
    if isinstance(step, ModuleStep):
        return step.signature is not None or ":" not in step.module
    return True


def check_overwrites(steps: list[Any], fields: set[str]) -> list[str]:
    """Find steps that write a field the input rows already have (issue 24).

    Rows ``{question, answer}`` through ``question -> answer`` lose their ``answer``: the model's
    answer replaces it, and an ``exact_match`` against ``answer`` then scores the model against
    itself. To keep gold labels, write the output elsewhere (``outputs: {answer: predicted}`` and
    the metric's ``prediction: predicted``), or keep the gold under another name (``gold``).

    Args:
        steps: The pipeline's steps (top level, in order).
        fields: The fields the input rows have.

    Returns:
        A warning per overwritten field that no later step reads as gold.

    Raises:
        PipelineSpecError: A later step reads an overwritten input field as its gold labels (names
            the field, both steps and how to keep the labels).
    """
    warnings: list[str] = []
    overwritten: dict[str, tuple[str, bool]] = {}
    flagged: set[str] = set()  # overwritten fields a warning already names
    for step in steps:
        for reader, gold in _gold_readers(step):
            if gold in overwritten:
                writer, sure = overwritten[gold]
                message = (
                    f"reads gold labels from field {gold!r}, which step {writer!r} overwrites with its own output, "
                    f"so it would score the step against itself; keep the labels by writing the output elsewhere "
                    f"(outputs: {{{gold}: predicted_{gold}}} on {writer!r} and prediction: predicted_{gold} here)"
                )
                if sure:
                    raise PipelineSpecError(message, step=reader)
                warnings.append(f"step {reader!r} {message} (if {writer!r} returns {gold!r})")
                flagged.add(gold)
        for field in step.produces():
            if field in fields and field not in overwritten:
                overwritten[field] = (str(step.name), _surely_produces(step))
    for field, (writer, _sure) in overwritten.items():
        if field not in flagged:
            warnings.append(
                f"step {writer!r} writes field {field!r}, which the input rows already have: their values "
                f"are replaced by the step's output (map it elsewhere with outputs: {{{field}: new_name}} to "
                "keep both)"
            )
    return warnings


def _first_missing(steps: list[Any], available: set[str]) -> tuple[str, str] | None:
    for step in steps:
        for field in step.needs():
            if field not in available:
                return step.name, field
        if isinstance(step, ParallelStep):
            for branch in step.parallel.values():
                if (missing := _first_missing(branch, set(available))) is not None:
                    return missing
        elif isinstance(step, ConditionalStep):
            for branch in (step.then, step.otherwise):
                if (missing := _first_missing(branch, set(available))) is not None:
                    return missing
        elif isinstance(step, MapStep) and (missing := _first_missing(step.steps, {*available, step.item})):
            return missing
        elif isinstance(step, SelectStep):
            for candidate in step.select.candidates:
                if (missing := _first_missing([candidate], set(available))) is not None:
                    return missing
        available.update(step.produces())
    return None


def _validate_step(step: Any) -> None:
    """Check what a step names exists and parses; raise PipelineSpecError naming the step."""
    try:
        if isinstance(step, ModuleStep):
            _validate_module_step(step)
        elif isinstance(step, SelectStep):
            outputs = {c.name: sorted(c.produces()) for c in step.select.candidates}
            if len({tuple(v) for v in outputs.values()}) > 1:
                raise PipelineSpecError(
                    f"select candidates must produce the same fields; they produce {outputs}", step=step.name
                )
        elif isinstance(step, NativeStep):
            if step.native == "validate":
                from tasks.signatures import parse_signature

                parse_signature(step.signature or "")
            elif step.native == "template":
                from tasks.templates import compile_template

                compile_template(step.template or "")
            else:
                from tasks.metrics import get_metric

                get_metric(step.metric or "")
    except PipelineSpecError:
        raise
    except (SignatureError, UnknownModuleError, ValueError) as exc:
        raise PipelineSpecError(str(exc), step=step.name) from exc


def _validate_module_step(step: ModuleStep) -> None:
    import registry

    if ":" in step.module and not is_import_path(step.module):
        raise PipelineSpecError(f"{step.module!r} is not an import path 'pkg.mod:Class'", step=step.name)
    try:
        info = registry.get_module(step.module)
    except UnknownModuleError as exc:
        hint = (
            "; register it first (registry.register_user_module or `dspex registry register`)"
            if ":" in step.module
            else ""
        )
        raise PipelineSpecError(f"{exc}{hint}", step=step.name) from exc
    if info.category == "optimization":
        raise PipelineSpecError(
            f"{step.module} is an optimizer, not a module a pipeline step runs; use the optimize flow",
            step=step.name,
        )
    is_user = ":" in step.module
    if step.signature is None and not is_user:
        raise PipelineSpecError(f"{step.module} needs a 'signature'", step=step.name)
    if is_user:  # inputs inferable, outputs produced (issue 13)
        from tasks.modules import check_program_step

        check_program_step(step)
    spec = step.signature_spec()
    if spec is not None:
        unknown_in = sorted(set(step.inputs) - set(spec.input_names))
        unknown_out = sorted(set(step.outputs) - set(spec.output_names))
        if unknown_in or unknown_out:
            raise PipelineSpecError(
                f"field mapping names fields the signature lacks: inputs {unknown_in}, outputs {unknown_out}",
                step=step.name,
            )


for _model in (ParallelStep, ConditionalStep, MapStep, SelectOptions, SelectStep, PipelineSpec):
    _model.model_rebuild()


def resolve_spec(spec: PipelineSpec, values: Mapping[str, Any] | None = None) -> PipelineSpec:
    """The concrete spec for ``values`` (defaults for the rest): no variables, no references.

    Args:
        spec: A spec with variables (a spec without any is returned as is when no values are given).
        values: Variable name -> value.

    Raises:
        VariableError: An unknown variable, a value out of range, or a concrete spec that does not
            validate (the message names the variable values and the step).
    """
    template = spec.template_steps()
    if not spec.variables:
        if values:
            raise VariableError(f"spec {spec.name!r} declares no variables, got {sorted(values)}")
        return spec
    used_by = references(template)
    chosen = validate_values(spec.variables, values, used_by)
    data = spec.model_dump(mode="json", by_alias=True, exclude={"variables", "steps"})
    data["steps"] = substitute(template, chosen)
    try:
        return PipelineSpec.model_validate(data)
    except ValidationError as exc:
        raise _resolution_error(exc, chosen, used_by) from None
    except PipelineSpecError as exc:
        raise _spec_error(exc, chosen, used_by) from None


def _spec_error(
    exc: PipelineSpecError, chosen: Mapping[str, Any], used_by: Mapping[str, list[str]]
) -> VariableError:
    step = exc.step
    involved = [n for n, labels in used_by.items() if step is None or step in labels] or list(used_by)
    shown = ", ".join(f"{n}={chosen[n]!r}" for n in involved if n in chosen)
    return VariableError(f"with {shown}: {exc}", variable=involved[0] if involved else None, step=step)


def _resolution_error(
    exc: ValidationError, chosen: Mapping[str, Any], used_by: Mapping[str, list[str]]
) -> VariableError:
    for error in exc.errors():
        original = (error.get("ctx") or {}).get("error")
        if isinstance(original, PipelineSpecError):
            return _spec_error(original, chosen, used_by)
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    shown = ", ".join(f"{n}={v!r}" for n, v in chosen.items())
    return VariableError(f"with {shown}: {where}: {first['msg']}", variable=None, step=where)
