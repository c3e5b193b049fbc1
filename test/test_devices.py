"""One device rule for the VO and the trainer: trianflow_ros.devices.resolve_device."""

import pytest
import torch

from trianflow_ros.devices import resolve_device


def test_cpu_names_and_devices():
    assert resolve_device('cpu') == torch.device('cpu')
    assert resolve_device(' CPU ') == torch.device('cpu')
    dev = torch.device('cpu')
    assert resolve_device(dev) is dev
    expected = 'cuda' if torch.cuda.is_available() else 'cpu'
    for auto in ('auto', None, ''):
        assert resolve_device(auto).type == expected
    with pytest.raises(RuntimeError, match='unknown device'):
        resolve_device('tpu')


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the error without CUDA')
def test_cuda_without_cuda_is_a_clear_error():
    for name in ('cuda', 'cuda:1'):
        with pytest.raises(RuntimeError, match='CUDA is not available'):
            resolve_device(name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_index():
    assert resolve_device('cuda') == torch.device('cuda', torch.cuda.current_device())
    assert resolve_device('cuda', local_rank=0) == torch.device('cuda', 0)
    assert resolve_device('cuda:0') == torch.device('cuda:0')
