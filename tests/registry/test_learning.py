import pytest

from registry.learning import Series, Usage, UsageStats, estimate_for, percentile
from registry.models import Category, ModuleInfo, PoolType


def test_percentile_interpolates():
    assert percentile([1.0], 95) == 1.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([0.0, 10.0], 95) == pytest.approx(9.5)
    with pytest.raises(ValueError):
        percentile([], 50)


def test_series_is_immutable_and_windowed():
    series = Series.of([5.0])
    longer = series.add(1.0, window=2).add(3.0, window=2)
    assert series.samples == (5.0,)
    assert longer.samples == (1.0, 3.0) and longer.median == 2.0


def test_usage_keeps_only_successful_durations():
    usage = Usage().add(4.0, success=True, window=10).add(100.0, success=False, window=10)
    assert (usage.calls, usage.failures, usage.durations) == (2, 1, (4.0,))
    assert UsageStats.of("m", None).calls == 0 and UsageStats.of("m", usage).p50_ms == 4.0


def test_estimate_for_falls_back_in_order():
    info = ModuleInfo(name="dspy.X", category=Category.PREDICTION, pool_type="gpu", estimated_duration_ms=100)
    assert estimate_for(info, None, "large", None, 3).model_dump() == {
        "ms": 200,
        "source": "static",
        "samples": 0,
    }
    series = {(PoolType.GENERAL, "small"): Series.of([1.0, 1.0, 1.0])}
    # Named pool without data: static, whatever other pools saw.
    assert estimate_for(info, series, "small", PoolType.GPU, 3).source == "static"
    # No pool named: own pool (gpu) has nothing, any pool has enough; small -> normal scales by 2.
    assert estimate_for(info, series, "normal", None, 3).model_dump() == {
        "ms": 2,
        "source": "learned",
        "samples": 3,
    }
    # Sub-millisecond learned values never estimate 0 ms.
    tiny = {(PoolType.GPU, "normal"): Series.of([0.1, 0.1, 0.1])}
    assert estimate_for(info, tiny, "normal", None, 3).ms == 1
