"""
The dense front end's match selection (trianflow_ros.vo.matches): validity at a stride.

Checked: the validity and score of every s-th pixel (``match_validity(..., stride=s)``) are
exactly those of every pixel read at (s i, s j), also with non-finite flow; the selected
matches of ``vo.select_stride`` 2 start on even pixels, in full-size pixels, and follow a known
image shift after the KLT refinement.
"""

import pytest
import torch
from trianflow_ros.config import Config
from trianflow_ros.data.synthetic import make_sequence
from trianflow_ros.vo.matches import match_validity, select_matches
from trianflow_ros.vo.providers import DISFlowProvider

H, W = 96, 320
_FRAMES = {}


def frame() -> torch.Tensor:
    if 'f' not in _FRAMES:
        _FRAMES['f'] = make_sequence('forward', 2, 256, 832, seed=0, stride=1).images[0]
    return _FRAMES['f']


def shifted_pair(dx: int, dy: int):
    """Two (1, 3, H, W) crops; the content at (x, y) of the first is at (x + dx, y + dy)."""
    f = frame()
    y0, x0 = 40, 60
    first = f[:, y0:y0 + H, x0:x0 + W]
    second = f[:, y0 - dy:y0 - dy + H, x0 - dx:x0 - dx + W]
    return first[None].contiguous(), second[None].contiguous()


@pytest.mark.parametrize('stride', [2, 3])
def test_validity_at_a_stride_is_that_of_every_pixel_there(stride):
    img1, img2 = shifted_pair(5, 2)
    f12, f21 = DISFlowProvider('fast')(img1, img2)
    cfg = Config()
    v1, s1 = match_validity(img1, img2, f12, f21, cfg)
    vs, ss = match_validity(img1, img2, f12, f21, cfg, stride)
    assert vs.shape == (1, 1, -(-H // stride), -(-W // stride))
    assert torch.equal(vs, v1[..., ::stride, ::stride])
    assert torch.equal(ss, s1[..., ::stride, ::stride])
    assert 0.3 < float(vs.float().mean()) < 1.0            # a real mix of valid and not
    # non-finite flow: no match there, the rest as before
    f12n = f12.clone()
    f12n[..., 10:20, 30:60] = float('nan')
    f21n = f21.clone()
    f21n[..., 50:55, 100:140] = float('inf')
    v1, s1 = match_validity(img1, img2, f12n, f21n, cfg)
    vs, ss = match_validity(img1, img2, f12n, f21n, cfg, stride)
    assert torch.equal(vs, v1[..., ::stride, ::stride])
    assert torch.equal(ss, s1[..., ::stride, ::stride])
    assert not bool(vs[..., 10 // stride + 1:20 // stride, 30 // stride + 1:60 // stride].any())
    with pytest.raises(ValueError, match='stride'):
        match_validity(img1, img2, f12, f21, cfg, 0)


def test_selected_matches_start_on_the_stride_and_follow_the_shift():
    img1, img2 = shifted_pair(6, 3)
    f12, f21 = DISFlowProvider('medium')(img1, img2)
    cfg = Config()
    cfg.vo.num_matches = 500             # 96x320 at stride 2: 2300 candidates, >= 3 per match
    assert cfg.vo.select_stride == 2 and cfg.vo.klt_window > 0
    m = select_matches(img1, img2, f12, f21, cfg, generator=torch.Generator().manual_seed(0))
    x1, x2 = m.x1[0], m.x2[0]
    assert x1.shape[0] > 250
    assert torch.equal(x1, torch.round(x1)) and bool((x1 % 2 == 0).all())
    assert float(x1[:, 0].max()) > 0.8 * W and float(x1[:, 1].max()) > 0.8 * H   # full size
    err = (x2 - x1 - torch.tensor([6.0, 3.0], dtype=x1.dtype)).norm(dim=-1)
    assert float(err.median()) < 0.05 and float((err < 0.5).double().mean()) > 0.95
    # without the KLT refinement every pixel proposes (the maps are the matches)
    cfg.vo.klt_window = 0
    m0 = select_matches(img1, img2, f12, f21, cfg, generator=torch.Generator().manual_seed(0))
    assert bool((m0.x1[0] % 2 == 1).any())


def test_the_stride_keeps_enough_candidates():
    from trianflow_ros.vo.matches import CANDIDATES_PER_MATCH, proposal_stride
    cfg = Config()
    assert proposal_stride(cfg, (256, 832)) == 2            # 16 000 candidates for 5000
    assert proposal_stride(cfg, (64, 192)) == 1             # a network's input: every pixel
    cfg.vo.num_matches = 6000
    assert proposal_stride(cfg, (256, 832)) == 1
    cfg.vo.select_stride, cfg.vo.num_matches = 4, 1000
    s = proposal_stride(cfg, (256, 832))
    assert s == 4 and cfg.vo.top_ratio * (256 // s) * (832 // s) >= CANDIDATES_PER_MATCH * 1000
    cfg.vo.select_stride = 1
    assert proposal_stride(cfg, (2000, 2000)) == 1
