"""geometry.checks.all_finite: one reduction that never calls a non-finite tensor finite."""

import pytest
import torch
from trianflow_ros.geometry.checks import all_finite


@pytest.mark.parametrize('dtype', [torch.float16, torch.float32, torch.float64])
def test_all_finite_agrees_with_isfinite(dtype):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(2, 2, 40, 60, generator=g) * 50).to(dtype)
    assert all_finite(x) and all_finite(x[:0])
    for bad in (float('nan'), float('inf'), -float('inf')):
        y = x.clone()
        y[1, 0, 17, 33] = bad
        assert not all_finite(y)
    # +inf and -inf together sum to NaN: still not finite
    y = x.clone()
    y[0, 0, 0, 0], y[1, 1, 1, 1] = float('inf'), -float('inf')
    assert not all_finite(y)


def test_an_overflowing_sum_only_sends_the_caller_to_its_slow_path():
    # every element finite but the sum overflows: False (the caller then checks per element,
    # which is correct, only slower); never True for a non-finite tensor
    x = torch.full((4,), 60000.0, dtype=torch.float16)
    assert bool(torch.isfinite(x).all()) and not all_finite(x)
