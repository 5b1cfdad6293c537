"""The route log line's batch counts add up to the rows it routes (issue 11: '3 batches of 16' for 40 rows did not)."""

import pytest

from flows.engine.core import _batch_counts


def _chunks(rows: int, size: int) -> list[list[int]]:
    active = list(range(rows))
    return [active[i : i + size] for i in range(0, rows, size)]


@pytest.mark.parametrize(
    ("rows", "size", "expected"),
    [
        (40, 16, "3 batches: 2 x 16 + 8"),
        (40, 8, "5 batches: 5 x 8"),
        (5, 16, "1 batch: 1 x 5"),
        (0, 16, "0 batches"),
    ],
)
def test_batch_counts_name_sizes_that_add_up(rows, size, expected):
    assert _batch_counts(_chunks(rows, size)) == expected


@pytest.mark.parametrize(("rows", "size"), [(1, 1), (17, 4), (100, 7), (64, 64)])
def test_the_numbers_in_the_text_add_up_to_the_rows(rows, size):
    text = _batch_counts(_chunks(rows, size)).split(": ")[1]
    total = sum(
        int(n) * int(m) for n, m in (part.split(" x ") for part in text.split(" + ") if " x " in part)
    )
    total += sum(int(part) for part in text.split(" + ") if " x " not in part)
    assert total == rows
