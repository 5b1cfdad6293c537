import dspy
import pytest

from dspex import exceptions as exc


def test_every_error_subclasses_the_base_and_has_a_unique_code():
    classes = [getattr(exc, name) for name in exc.__all__ if isinstance(getattr(exc, name), type)]
    assert all(issubclass(cls, exc.DSPexError) for cls in classes)
    codes = [cls.code for cls in classes]
    assert len(codes) == len(set(codes))


def test_builtin_bases_let_callers_catch_naturally():
    assert issubclass(exc.SignatureError, ValueError)
    assert issubclass(exc.PayloadError, ValueError)
    assert issubclass(exc.UnknownModuleError, LookupError)
    assert issubclass(exc.PoolUnavailableError, RuntimeError)


def test_unknown_module_suggests_close_names():
    error = exc.UnknownModuleError("dspy.ChainOfThougt", ["dspy.ChainOfThought"])
    assert str(error) == "unknown module 'dspy.ChainOfThougt'; did you mean 'dspy.ChainOfThought'?"


def test_signature_error_carries_column_and_hint():
    error = exc.SignatureError("missing '->'", text="a b", column=3, hint="write 'inputs -> outputs'")
    assert error.column == 3
    assert "column 3" in str(error) and "hint" in str(error)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (dspy.LMRateLimitError("slow down"), True),
        (dspy.LMServerError("boom"), True),
        (dspy.LMAuthError("bad key"), False),
        (ValueError("bad input"), False),
        (exc.SignatureError("bad"), False),
        (exc.DispatchError("lost"), True),
    ],
)
def test_is_retryable(error, expected):
    assert exc.is_retryable(error) is expected


def test_is_retryable_follows_the_cause_chain():
    try:
        try:
            raise dspy.LMTimeoutError("timed out")
        except dspy.LMTimeoutError as inner:
            raise RuntimeError("batch failed") from inner
    except RuntimeError as outer:
        assert exc.is_retryable(outer)
