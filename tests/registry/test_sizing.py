import pytest

from dspex.exceptions import RegistryQueryError
from registry.sizing import SIZE_FACTORS, size_bucket, timeout_factor


def test_the_seeds_size_factors():
    assert SIZE_FACTORS == {"small": 0.5, "normal": 1.0, "large": 2.0, "very_large": 5.0}


@pytest.mark.parametrize(
    ("size", "bucket"),
    [
        ("small", "small"),
        ("very_large", "very_large"),
        (0, "small"),
        (100, "small"),
        (101, "normal"),
        (1_000, "normal"),
        (1_001, "large"),
        (10_000, "large"),
        (10_001, "very_large"),
    ],
)
def test_size_bucket(size, bucket):
    assert size_bucket(size) == bucket


@pytest.mark.parametrize("size", ["huge", "Large", -1, True, 1.5, None, [1]])
def test_bad_sizes_raise_a_query_error_listing_valid_sizes(size):
    with pytest.raises(RegistryQueryError) as caught:
        size_bucket(size)
    assert isinstance(caught.value, ValueError)
    assert "small" in str(caught.value) or ">= 0" in str(caught.value)


@pytest.mark.parametrize(
    ("size", "factor"), [(None, 1.0), (0, 1.0), (1_000, 1.0), (1_001, 1.5), (10_000, 1.5), (10_001, 3.0)]
)
def test_timeout_factor_is_the_seeds(size, factor):
    assert timeout_factor(size) == factor
