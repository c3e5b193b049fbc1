"""
Relative pose from an essential matrix: the four-fold decomposition and the cheirality test.

``T_21`` maps frame-1 points into frame 2 (X_2 = R X_1 + t), so E = [t]_x R and x2^T F x1 = 0.
The translation is known only up to scale and is returned with unit norm. References are to
Hartley & Zisserman, 2nd ed. (H&Z).
"""

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from trianflow_ros.geometry.checks import check_shape
from trianflow_ros.geometry.homography import rotation_homography, transfer_error
from trianflow_ros.geometry.se3 import make_pose
from trianflow_ros.geometry.threads import one_cpu_thread


_W_PAIR = torch.tensor([[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]],
                        [[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]], dtype=torch.float64)
_T_SIGNS = torch.tensor([[1.0], [-1.0], [1.0], [-1.0]], dtype=torch.float64)


@dataclass
class PoseResult:
    """
    Relative pose chosen by the cheirality test.

    :param R: rotation of T_21, shape (B, 3, 3).
    :param t: translation direction of T_21, unit norm, shape (B, 3).
    :param T_21: pose mapping frame-1 points into frame 2, shape (B, 4, 4).
    :param num_positive: number of (masked) points in front of both cameras, shape (B,) int64.
    :param positive: points in front of both cameras for the chosen candidate, shape (B, N),
        bool (False for masked-out points).
    """

    R: torch.Tensor
    t: torch.Tensor
    T_21: torch.Tensor
    num_positive: torch.Tensor
    positive: torch.Tensor


def decompose_essential(E: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Return the four (R, t) candidates of an essential matrix (H&Z Result 9.19).

    With E = U diag(1, 1, 0) V^T (det U = det V = +1) and W = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]
    the candidates are (U W V^T, u3), (U W V^T, -u3), (U W^T V^T, u3), (U W^T V^T, -u3), with
    u3 the last column of U. E need not be exactly essential (noise): only its two largest
    singular directions are used.

    :param E: essential matrices, shape (B, 3, 3).
    :return: R (B, 4, 3, 3) with det +1 and t (B, 4, 3) with unit norm, in that order.
        Not meant for gradients (SVD of a matrix with repeated singular values).
    """
    check_shape(E, 'E', ('B', 3, 3))
    U, _, Vh = torch.linalg.svd(E)
    # Flipping the sign of U or V^T keeps U diag(1, 1, 0) V^T up to the sign of E, which the
    # epipolar constraint does not see; it makes both proper rotations.
    U = U * torch.linalg.det(U).sign()[:, None, None]
    Vh = Vh * torch.linalg.det(Vh).sign()[:, None, None]
    W = _W_PAIR.to(E)                                                     # W, W^T
    R = ((U.unsqueeze(1) @ W) @ Vh.unsqueeze(1)).repeat_interleave(2, dim=1)
    t = U[:, None, :, 2] * _T_SIGNS.to(E)
    return R, t


def translation_axis_angle_deg(E: torch.Tensor) -> torch.Tensor:
    """
    Return the angle between the translation of E and the optical axis, in degrees.

    E = [t]x R has E^T t = 0, so t is the left singular vector of E's smallest singular value
    (up to sign, which the angle ignores: 0 = along the axis, forwards or backwards; 90 =
    sideways).

    :param E: essential matrices, shape (B, 3, 3).
    :return: (B,) angles in [0, 90].
    """
    check_shape(E, 'E', ('B', 3, 3))
    U, _, _ = torch.linalg.svd(E)
    t = U[:, :, 2]
    cos = (t[:, 2].abs() / t.norm(dim=-1).clamp_min(1e-300)).clamp(0.0, 1.0)
    return torch.rad2deg(torch.acos(cos))


def rotation_parallax_px(E: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor, K1: torch.Tensor,
                         K2: torch.Tensor) -> torch.Tensor:
    """
    Pixel distance of every match from its position under the rotation of E alone.

    Of E's two rotations (:func:`decompose_essential`) the one of the smaller angle is taken
    (consecutive frames turn by less than 90 deg; the other differs by 180 deg about t): the
    transfer error of its infinite homography ``K2 R K1^-1``
    (:func:`~trianflow_ros.geometry.homography.transfer_error`) is the parallax the
    translation caused, 0 for a point at infinity or a pure rotation.

    :param E: essential matrices (B, 3, 3).
    :param x1: pixels in image 1 (B, N, 2).
    :param x2: their matches in image 2 (B, N, 2).
    :param K1: intrinsics of camera 1 (B, 3, 3).
    :param K2: intrinsics of camera 2 (B, 3, 3).
    :return: parallax (B, N) in pixels of image 2, in E's dtype. Not meant for gradients.
    """
    check_shape(E, 'E', ('B', 3, 3))
    R, _ = decompose_essential(E)
    pair = R[:, ::2]                                                     # (B, 2, 3, 3)
    trace = pair.diagonal(dim1=-2, dim2=-1).sum(-1)                      # larger = smaller angle
    R = pair[torch.arange(E.shape[0]), trace.argmax(1)]                  # (B, 3, 3)
    dt = E.dtype
    return transfer_error(rotation_homography(R, K1.to(dt), K2.to(dt)), x1.to(dt), x2.to(dt))


def _check_two_view(E: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor, K1: torch.Tensor,
                    K2: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Check the inputs of :func:`recover_pose` / :func:`choose_pose`; return the mask, bool."""
    check_shape(E, 'E', ('B', 3, 3))
    b = E.shape[0]
    check_shape(x1, 'x1', (b, 'N', 2))
    check_shape(x2, 'x2', x1.shape)
    check_shape(K1, 'K1', (b, 3, 3))
    check_shape(K2, 'K2', (b, 3, 3))
    n = x1.shape[1]
    if mask is None:
        mask = torch.ones(b, n, dtype=torch.bool, device=x1.device)
    check_shape(mask, 'mask', (b, n))
    return mask > 0


def recover_pose(E: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor, K1: torch.Tensor,
                 K2: torch.Tensor, mask: Optional[torch.Tensor] = None,
                 max_depth: float = 50.0) -> PoseResult:
    """
    Choose the (R, t) of E that puts most correspondences in front of both cameras.

    All four candidates of :func:`decompose_essential` get the depths of every correspondence
    in both cameras (all batch elements and candidates at once, each element with its own K and
    E), and the candidate with the most points at depths in (0, max_depth) in both cameras wins
    (H&Z Sec. 9.6.3). The depths solve z1 R y1 + t = z2 y2 in closed form (its cross products
    with y2 and with R y1; exact for consistent matches, and for noisy ones equal in sign to a
    triangulation except for nearly parallel rays, which lie beyond ``max_depth``). As in
    cv2.recoverPose, points farther than ``max_depth`` (in units of the baseline) are not
    counted: their sign is decided by noise.

    :param E: essential matrices with x2^T K2^-T E K1^-1 x1 = 0, shape (B, 3, 3).
    :param x1: pixel coordinates in image 1, shape (B, N, 2).
    :param x2: pixel coordinates in image 2, shape (B, N, 2).
    :param K1: intrinsics of camera 1, shape (B, 3, 3).
    :param K2: intrinsics of camera 2, shape (B, 3, 3).
    :param mask: optional correspondences to use (e.g. RANSAC inliers), shape (B, N), bool or
        non-negative weights (> 0 = used).
    :param max_depth: points with a depth beyond this (baseline = 1) do not vote.
    :return: :class:`PoseResult`. Not differentiable. On CPU the call runs on one intra-op
        thread (see :func:`~trianflow_ros.geometry.threads.one_cpu_thread`).
    """
    mask = _check_two_view(E, x1, x2, K1, K2, mask)
    dtype = x1.dtype
    same_K = K2 is K1
    E, K1 = E.detach().to(dtype), K1.detach().to(dtype)
    K2 = K1 if same_K else K2.detach().to(dtype)
    x1, x2 = x1.detach(), x2.detach()

    with one_cpu_thread(x1.device):
        return _cheirality(E, x1, x2, K1, K2, mask, max_depth)


def _cheirality(E, x1, x2, K1, K2, mask, max_depth) -> PoseResult:
    """Vote of the four candidates, see :func:`recover_pose`."""
    b, n = x1.shape[:2]
    # the SVD in float64 even for float32 inputs: a float32 SVD leaves R orthonormal only to a
    # few 1e-7, which a VO chaining many relative poses accumulates
    R, t = (v.to(E.dtype) for v in decompose_essential(E.double()))      # (B, 4, 3, 3), (B, 4, 3)
    # rays of every pair with its own K, channels-first (B, 3, N), y = K^-1 [x, 1]
    K1i = torch.linalg.inv(K1)
    K2i = K1i if K2 is K1 else torch.linalg.inv(K2)
    y1 = torch.baddbmm(K1i[:, :, 2:], K1i[:, :, :2], x1.transpose(1, 2))
    y2 = torch.baddbmm(K2i[:, :, 2:], K2i[:, :, :2], x2.transpose(1, 2))
    # depths of z1 a + t = z2 y2 (a = R y1): the cross products with y2 and with a give
    # z1 = ((t.y2)(a.y2) - (t.a)|y2|^2) / d and z2 = ((t.y2)|a|^2 - (t.a)(a.y2)) / d with
    # d = |a x y2|^2 = |a|^2 |y2|^2 - (a.y2)^2 and |a| = |y1|. Candidates 1 and 3 are 0 and 2
    # with t negated, which negates both depths: only two rotations are evaluated.
    R2, t2 = R[:, 0::2], t[:, 0::2]                                       # (B, 2, 3, 3), (B, 2, 3)
    a = R2 @ y1.unsqueeze(1)                                              # (B, 2, 3, N)
    ay2 = (a * y2.unsqueeze(1)).sum(2)                                    # (B, 2, N)
    ta = (t2.unsqueeze(2) @ a).squeeze(2)
    ty2 = t2 @ y2
    aa = y1.square().sum(1, keepdim=True)                                 # (B, 1, N)
    yy = y2.square().sum(1, keepdim=True)
    d = (aa * yy - ay2.square()).clamp_(min=1e-30)                        # 0: parallel rays
    z1 = (ty2 * ay2 - ta * yy) / d
    z2 = (ty2 * aa - ta * ay2) / d
    z1 = torch.stack((z1, -z1), dim=2).flatten(1, 2)                      # (B, 4, N)
    z2 = torch.stack((z2, -z2), dim=2).flatten(1, 2)
    ok = (z1 > 0) & (z2 > 0) & (z1 < max_depth) & (z2 < max_depth) & mask.unsqueeze(1)
    counts = ok.sum(dim=-1)                                               # (B, 4)
    best = counts.argmax(dim=1)                                           # (B,)
    ar = torch.arange(b, device=E.device)
    R_best = R[ar, best]
    t_best = t[ar, best]
    return PoseResult(R=R_best, t=t_best, T_21=make_pose(R_best, t_best),
                      num_positive=counts[ar, best].to(torch.int64), positive=ok[ar, best])


@dataclass
class PoseChoice:
    """
    Relative pose chosen by the parallax vote of :func:`choose_pose`.

    :param R: rotation of the winning candidate, shape (B, 3, 3).
    :param t: its translation direction, unit norm, shape (B, 3).
    :param T_21: pose mapping frame-1 points into frame 2 (unit translation), shape (B, 4, 4).
    :param decided: the winner is clear (enough votes, no similar second), shape (B,) bool.
    :param votes: points with enough parallax in front of both cameras, per candidate in the
        order of :func:`decompose_essential`, shape (B, 4) int64.
    :param num_parallax: masked points whose parallax can fix the sign, shape (B,) int64.
    :param parallax_px: per point, the angle between the two rays of the winning rotation
        times the focal length (pixels of parallax), shape (B, N) (0 where masked out).
    :param positive: points not contradicting the winner: in front of both cameras, or too
        little parallax to tell, shape (B, N) bool (False where masked out).
    """

    R: torch.Tensor
    t: torch.Tensor
    T_21: torch.Tensor
    decided: torch.Tensor
    votes: torch.Tensor
    num_parallax: torch.Tensor
    parallax_px: torch.Tensor
    positive: torch.Tensor


def choose_pose(E: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor, K1: torch.Tensor,
                K2: torch.Tensor, mask: Optional[torch.Tensor] = None, *,
                min_parallax_px: float = 2.0, similar_ratio: float = 0.7,
                min_votes: int = 30, min_vote_share: float = 0.0) -> PoseChoice:
    """
    Choose the (R, t) of E by a vote of the points whose parallax can fix the sign.

    The cheirality test of :func:`recover_pose` counts every point, but a point whose two rays
    are almost parallel (far away, or a short baseline) has a triangulated depth that is noise
    around infinity and a random sign: with most points far, no candidate reaches a majority
    although the pose is right. As ORB-SLAM's initialiser does (``CheckRT``), only points with
    parallax vote: the angle between the rays ``R y1`` and ``y2`` times the mean focal length
    must reach ``min_parallax_px`` (a parallax well above the flow noise, about 4 sigma of
    0.5 px matches). A candidate gets the votes of the voting points it puts in front of both
    cameras. (All four candidates satisfy the epipolar constraint, so their rays always meet,
    in front or behind: the sign is the only test.) Ties, e.g. no vote at all, go to the
    rotation with the smaller median parallax, not to its "twisted" partner (rotated by 180
    degrees about the baseline), which makes distant points look near. The winner is
    *decided* when it has at least ``min_votes`` votes and no other
    candidate has more than ``similar_ratio`` of its votes (ORB-SLAM's "similar" rule, 0.7);
    otherwise the translation is not observable in this pair and the caller should fall back
    to a rotation-only or depth-based (PnP) pose and wait for more parallax.

    :param E: essential matrices with x2^T K2^-T E K1^-1 x1 = 0, shape (B, 3, 3).
    :param x1: pixels in image 1 (pinhole: undistorted), shape (B, N, 2).
    :param x2: pixels in image 2, shape (B, N, 2).
    :param K1: intrinsics of camera 1, shape (B, 3, 3).
    :param K2: intrinsics of camera 2, shape (B, 3, 3).
    :param mask: correspondences to use (e.g. the RANSAC inliers), shape (B, N), bool or
        weights (> 0 = used); None: all.
    :param min_parallax_px: parallax (focal x ray angle, pixels) a point needs to vote.
    :param similar_ratio: a second candidate with more than this share of the winner's votes
        makes the choice undecided.
    :param min_votes: fewer votes for the winner: undecided.
    :param min_vote_share: fewer votes for the winner than this share of the used points
        (``mask``): undecided. Under a pure rotation E is degenerate and a few dozen matches
        that slide along their epipolar lines (consistent with E, wrong) get parallax and vote
        (measured: 0.8-3 % of the inliers on a synthetic pure rotation), while a translation
        gives parallax to a large share (KITTI ~90 %, a highway's near road under far facades
        39-78 %, a hand-held checkerboard mostly > 10 %); 0 turns the test off.
    :return: :class:`PoseChoice`. Not differentiable; one intra-op thread on CPU.
    """
    mask = _check_two_view(E, x1, x2, K1, K2, mask)
    b, dtype = x1.shape[0], x1.dtype
    E, K1, K2 = E.detach().to(dtype), K1.detach().to(dtype), K2.detach().to(dtype)
    x1, x2 = x1.detach(), x2.detach()
    with one_cpu_thread(x1.device):
        R, t = (v.to(dtype) for v in decompose_essential(E.double()))
        K1i, K2i = torch.linalg.inv(K1), torch.linalg.inv(K2)
        y1 = torch.baddbmm(K1i[:, :, 2:], K1i[:, :, :2], x1.transpose(1, 2))   # (B, 3, N)
        y2 = torch.baddbmm(K2i[:, :, 2:], K2i[:, :, :2], x2.transpose(1, 2))
        R2, t2 = R[:, 0::2], t[:, 0::2]                                     # two rotations
        a = R2 @ y1.unsqueeze(1)                                            # (B, 2, 3, N)
        ay2 = (a * y2.unsqueeze(1)).sum(2)                                  # (B, 2, N)
        ta = (t2.unsqueeze(2) @ a).squeeze(2)
        ty2 = t2 @ y2
        aa = y1.square().sum(1, keepdim=True)
        yy = y2.square().sum(1, keepdim=True)
        d = (aa * yy - ay2.square()).clamp(min=1e-30)
        z1 = (ty2 * ay2 - ta * yy) / d
        z2 = (ty2 * aa - ta * ay2) / d
        # parallax: the angle between R y1 and y2 (same for t and -t)
        sin = d.sqrt() / (aa * yy).sqrt()
        cos = ay2 / (aa * yy).sqrt()
        focal = 0.25 * (K1[:, 0, 0] + K1[:, 1, 1] + K2[:, 0, 0] + K2[:, 1, 1])
        par = torch.atan2(sin, cos) * focal[:, None, None]                   # (B, 2, N)
        par = par.repeat_interleave(2, dim=1)                               # (B, 4, N)
        z1 = torch.stack((z1, -z1), dim=2).flatten(1, 2)
        z2 = torch.stack((z2, -z2), dim=2).flatten(1, 2)
        front = (z1 > 0) & (z2 > 0)
        voting = mask.unsqueeze(1) & (par >= min_parallax_px)
        votes = (voting & front).sum(-1)                                    # (B, 4)
        # ties (e.g. no vote at all) go to the rotation with the smaller median parallax
        med = torch.nanmedian(torch.where(mask.unsqueeze(1), par, torch.full_like(
            par, float('nan'))), dim=-1).values.nan_to_num(0.0)             # (B, 4)
        rank = med.argsort(dim=1).argsort(dim=1)                            # 0 = smallest
        best = (votes * 4 + (3 - rank)).argmax(dim=1)
        ar = torch.arange(b, device=E.device)
        top = votes[ar, best]
        similar = (votes > similar_ratio * top.unsqueeze(1)).sum(1)
        used = mask.sum(-1)
        decided = (top >= min_votes) & (similar <= 1) & (top >= min_vote_share * used)
        R_best, t_best = R[ar, best], t[ar, best]
        par_best = torch.where(mask, par[ar, best], torch.zeros_like(par[ar, best]))
        positive = mask & (front[ar, best] | (par_best < min_parallax_px))
        return PoseChoice(R=R_best, t=t_best, T_21=make_pose(R_best, t_best), decided=decided,
                          votes=votes.to(torch.int64),
                          num_parallax=voting[ar, best].sum(-1).to(torch.int64),
                          parallax_px=par_best, positive=positive)
