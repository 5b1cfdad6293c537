"""Item 8 of issue 13: credentials in URLs and error text never reach the terminal, the logs, row
errors, artifacts or Prefect's database (one redaction function, `dspex.redact.redact`).

The original failure: ``DSPEX_LM_API_BASE=http://alice:pw@host/v1`` and
``DSPEX_PAYLOAD_URL=s3://KEY:SECRET@bucket/p`` were printed in clear by ``dspex settings``, and the
credentials reached ``flow_run_state.message``, logs and artifacts through an error message.
"""

from __future__ import annotations

import json
import logging
import traceback

import pytest
from dspy.utils.dummies import DummyLM
from typer.testing import CliRunner

from deployments.cli import app
from dspex.exceptions import PayloadError, StepExecutionError
from dspex.redact import redact, redact_url
from tasks.batch import RowError

PASSWORD = "s3cr3t-pass-word"
URL = f"http://alice:{PASSWORD}@llm.internal/v1"


@pytest.mark.parametrize("as_json", [False, True])
def test_settings_command_masks_url_credentials(monkeypatch, as_json):
    monkeypatch.setenv("DSPEX_LM_API_BASE", URL)
    monkeypatch.setenv("DSPEX_PAYLOAD_URL", "s3://AKIAKEYID:SECRETKEY123@bucket/p")
    monkeypatch.setenv("COLUMNS", "200")
    result = CliRunner().invoke(app, ["settings", *(["--json"] if as_json else [])])
    assert result.exit_code == 0, result.output
    for secret in (PASSWORD, "alice", "AKIAKEYID", "SECRETKEY123"):
        assert secret not in result.output
    assert "llm.internal/v1" in result.output and "bucket/p" in result.output
    if as_json:
        values = json.loads(result.output)
        assert values["lm_api_base"] == "http://***@llm.internal/v1"
        assert values["resolved_payload_url"] == "s3://***@bucket/p"


def test_settings_mask_credentials_inside_lists(monkeypatch):
    from dspex.settings import get_settings

    monkeypatch.setenv(
        "DSPEX_DATA_ROOTS", json.dumps(["s3://AKIAKEYID:SECRETKEY123@bucket/data/", "/srv/data"])
    )
    assert get_settings().masked()["data_roots"] == ["s3://***@bucket/data/", "/srv/data"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://h/x?api_key=abc123&page=2", "https://h/x?api_key=***&page=2"),
        (
            "s3://b/k?X-Amz-Credential=AK&X-Amz-Signature=ff00",
            "s3://b/k?X-Amz-Credential=***&X-Amz-Signature=***",
        ),
        ("header Authorization: Bearer sk-abcdefghijklmnop", "header Authorization: Bearer ***"),
        ("max_tokens=5 author=me signature: list[int", "max_tokens=5 author=me signature: list[int"),
    ],
)
def test_redact_masks_query_secrets_and_tokens_but_nothing_else(text, expected):
    assert redact(text) == expected
    assert redact(redact(text)) == expected  # idempotent


def test_known_api_key_is_masked_wherever_it_appears(monkeypatch):
    monkeypatch.setenv("DSPEX_LM_API_KEY_ENV", "MY_KEY")
    monkeypatch.setenv("MY_KEY", "sk-live-0123456789")
    assert redact("the provider said: invalid key sk-live-0123456789") == "the provider said: invalid key ***"
    assert redact_url(URL) == "http://***@llm.internal/v1"


def test_row_errors_and_dspex_errors_never_carry_credentials():
    error = RowError(type="APIConnectionError", message=f"cannot connect to {URL}", retryable=True)
    assert PASSWORD not in error.message and "llm.internal" in error.message
    exc = PayloadError("cannot read payload", uri="s3://AKIAKEYID:SECRETKEY123@bucket/p/x.arrow")
    assert "SECRETKEY123" not in str(exc) and "bucket/p/x.arrow" in str(exc)


def test_event_payloads_never_carry_credentials(monkeypatch):
    from flows.telemetry import events

    sent: dict[str, object] = {}
    monkeypatch.setattr(events, "events_active", lambda: True)
    monkeypatch.setattr(events, "emit", lambda name, resource, **kwargs: sent.update(kwargs))
    events.batch_retried("s", pool="general", batch=1, attempt=2, error_type="X", message=f"refused by {URL}")
    assert "llm.internal" in json.dumps(sent["payload"]) and PASSWORD not in json.dumps(sent["payload"])


def test_log_records_are_masked_for_every_handler(caplog):
    logger = logging.getLogger("dspex.security-test")
    with caplog.at_level(logging.INFO):
        logger.info("calling %s", URL)
        try:
            raise RuntimeError(f"refused by {URL}")
        except RuntimeError:
            logger.exception("LM call failed")
    text = caplog.text
    assert PASSWORD not in text
    assert "http://***@llm.internal/v1" in text


@pytest.mark.integration
def test_failed_run_keeps_credentials_out_of_prefect_database(monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    import registry
    from flows import PipelineSpec, run_pipeline
    from flows.engine.pools import shutdown_local_pools

    monkeypatch.setenv("DSPEX_TRUSTED_IMPORT_ROOTS", '["fixtures_pkg"]')
    registry.register_user_module("fixtures_pkg.leaky:Leaky")
    spec = PipelineSpec.model_validate(
        {
            "name": "leaky",
            "steps": [{"module": "fixtures_pkg.leaky:Leaky", "inputs": {"question": "question"}}],
        }
    )
    try:
        state = run_pipeline(
            spec, data=[{"question": "q"}], lm=DummyLM([]), continue_on_error=False, return_state=True
        )
    finally:
        shutdown_local_pools()
    assert state.is_failed()
    with pytest.raises(StepExecutionError) as caught:
        state.result()
    assert PASSWORD not in str(caught.value)
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        artifacts = client.read_artifacts()
    stored = [run.state.message or "", *(log.message for log in logs)]
    stored += [json.dumps(a.data) for a in artifacts if a.flow_run_id == flow_run_id]
    assert "llm.internal" in " ".join(stored)  # the error is reported...
    assert not [text for text in stored if PASSWORD in text]  # ...without the password


# --- issue 20: the shapes a password takes when an HTTP client reports a URL ----------------------

LM_BASE = f"http://alice:{PASSWORD}@127.0.0.1:45369/v1"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # DSPy's transport prints the authority without the scheme
        (
            f"failed to connect to alice:{PASSWORD}@127.0.0.1:45369: [Errno 111]",
            "failed to connect to ***@127.0.0.1:45369: [Errno 111]",
        ),
        (f"bad port in authority: 'alice:{PASSWORD}@127.0.0.1'", "bad port in authority: '***@127.0.0.1'"),
        # the password alone, or percent-decoded, wherever it appears
        (f"auth failed for {PASSWORD}", "auth failed for ***"),
        (f"URL missing scheme: {LM_BASE!r}", "URL missing scheme: 'http://***@127.0.0.1:45369/v1'"),
        # a bare user:password@host of a URL that is not configured
        ("proxy bob:hunter22@proxy.internal:3128 refused", "proxy ***@proxy.internal:3128 refused"),
    ],
)
def test_redact_masks_a_configured_url_password_in_every_shape(monkeypatch, text, expected):
    monkeypatch.setenv("DSPEX_LM_API_BASE", LM_BASE)
    assert redact(text) == expected
    assert redact(redact(text)) == expected


@pytest.mark.parametrize(
    "text", ["git@github.com:org/repo.git", "mail a@b.example", "12:30:45 | INFO", "ssh alice@host", "x:1"]
)
def test_redact_leaves_text_without_a_password_alone(text):
    assert redact(text) == text


def test_known_secrets_include_the_password_of_every_configured_url(monkeypatch):
    from dspex.redact import known_secrets

    monkeypatch.setenv("DSPEX_LM_API_BASE", LM_BASE)
    monkeypatch.setenv("DSPEX_PAYLOAD_URL", "s3://AKIAKEYID:payload-Secret1@bucket/p")
    monkeypatch.setenv("DSPEX_SESSION_URL", "postgresql+psycopg://app:sess%40pw-123@db/app")
    monkeypatch.setenv("DSPEX_DATA_ROOTS", json.dumps(["https://u:roots-pw-99@data.internal/d/"]))
    monkeypatch.setenv("PREFECT_API_URL", "http://admin:prefect-pw-7@127.0.0.1:4200/api")
    monkeypatch.setenv("PREFECT_API_DATABASE_CONNECTION_URL", "postgresql+asyncpg://p:db-pw-1234@h/prefect")
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", "admin:auth-string-pw")
    secrets = known_secrets()
    for value in (
        PASSWORD,
        "payload-Secret1",
        "sess@pw-123",  # percent-decoded, as a driver prints it
        "sess%40pw-123",
        "roots-pw-99",
        "prefect-pw-7",
        "db-pw-1234",
        "admin:auth-string-pw",
        "auth-string-pw",
    ):
        assert value in secrets
        assert value not in redact(f"error: {value} rejected")
    assert "alice" not in secrets and "admin" not in secrets  # a user name alone is no secret value


def test_settings_repr_masks_url_credentials(monkeypatch):
    from dspex.settings import get_settings

    monkeypatch.setenv("DSPEX_LM_API_BASE", LM_BASE)
    settings = get_settings()
    assert PASSWORD not in repr(settings) and PASSWORD not in str(settings)
    assert "127.0.0.1:45369" in repr(settings)
    assert settings.lm_api_base == LM_BASE  # the value itself is untouched


def test_stored_flow_parameters_mask_url_credentials():
    from flows import run_pipeline
    from flows.engine.params import LMConfig

    stored = run_pipeline.serialize_parameters(
        {"lm": LMConfig(model="openai/m", api_base=LM_BASE), "data": f"https://alice:{PASSWORD}@h/d.jsonl"}
    )
    assert PASSWORD not in json.dumps(stored)
    assert stored["lm"]["api_base"] == "http://***@127.0.0.1:45369/v1"


def test_an_unexpected_error_is_masked_through_its_whole_chain(monkeypatch):
    from dspex.redact import redact_exception

    monkeypatch.setenv("DSPEX_LM_API_BASE", LM_BASE)
    try:
        try:
            raise OSError(f"cannot reach alice:{PASSWORD}@127.0.0.1:45369")
        except OSError as inner:
            raise RuntimeError(f"LM call to {LM_BASE} failed") from inner
    except RuntimeError as exc:
        masked = redact_exception(exc)
    text = "".join(traceback.format_exception(masked))
    assert PASSWORD not in text
    assert "***@127.0.0.1:45369" in text and "http://***@127.0.0.1:45369/v1" in text
