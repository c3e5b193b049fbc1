"""
Epipolar geometry: fundamental and essential matrices, the 8-point algorithm, epipolar errors.

Convention: ``x1``, ``x2`` are matching pixels (B, N, 2) and ``x2^T F x1 = 0``; the essential
matrix is ``E = K2^T F K1`` and satisfies ``y2^T E y1 = 0`` for the rays ``y = K^-1 [u, v, 1]``.
References are to Hartley & Zisserman, Multiple View Geometry, 2nd ed. (H&Z).
"""

from typing import Optional, Tuple

import torch

from trianflow_ros.geometry.camera import pixel_grid, to_homogeneous
from trianflow_ros.geometry.checks import check_shape


def normalize_points(x: torch.Tensor, weights: Optional[torch.Tensor] = None,
                     eps: float = 1e-12) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Hartley normalisation of 2D points (H&Z Sec. 4.4.4, used in Alg. 11.1).

    Translates the (weighted) centroid to the origin and scales so that the (weighted) mean
    distance to the origin is sqrt(2).

    :param x: points, shape (B, N, 2).
    :param weights: optional non-negative point weights, shape (B, N); zero-weight points do
        not influence the transform (they are still transformed).
    :param eps: guards the divisions for empty or collapsed point sets.
    :return: normalised points (B, N, 2) and the similarity T (B, 3, 3) with
        ``x_normalized = T [x, 1]``. Differentiable.
    """
    check_shape(x, 'x', ('B', 'N', 2))
    if weights is None:
        weights = torch.ones_like(x[..., 0])
    check_shape(weights, 'weights', (x.shape[0], x.shape[1]))
    w = weights.to(x.dtype)
    wsum = w.sum(dim=1, keepdim=True).clamp(min=eps)                      # (B, 1)
    centroid = (w.unsqueeze(-1) * x).sum(dim=1) / wsum                    # (B, 2)
    centred = x - centroid.unsqueeze(1)
    dist = (centred.square().sum(-1) + eps).sqrt()                        # (B, N)
    mean_dist = (w * dist).sum(dim=1) / wsum.squeeze(1)                   # (B,)
    scale = (2.0 ** 0.5) / mean_dist.clamp(min=eps)                       # (B,)
    zeros = torch.zeros_like(scale)
    ones = torch.ones_like(scale)
    T = torch.stack((scale, zeros, -scale * centroid[:, 0],
                     zeros, scale, -scale * centroid[:, 1],
                     zeros, zeros, ones), dim=-1).reshape(-1, 3, 3)
    return centred * scale[:, None, None], T


def _design_matrix(y1: torch.Tensor, y2: torch.Tensor) -> torch.Tensor:
    """Rows of the linear system A f = 0 from y2^T F y1 = 0 (H&Z eq. 11.3), shape (..., N, 9)."""
    u1, v1 = y1[..., 0], y1[..., 1]
    u2, v2 = y2[..., 0], y2[..., 1]
    one = torch.ones_like(u1)
    return torch.stack((u2 * u1, u2 * v1, u2, v2 * u1, v2 * v1, v2, u1, v1, one), dim=-1)


def _fix_sign(M: torch.Tensor) -> torch.Tensor:
    """Flip (..., 3, 3) matrices so that their entry of largest magnitude is positive."""
    flat = M.flatten(-2)
    idx = flat.abs().argmax(dim=-1, keepdim=True)
    sign = torch.where(flat.gather(-1, idx) < 0, -1.0, 1.0).to(M.dtype)
    return M * sign.unsqueeze(-1)


def _linear_solve(y1: torch.Tensor, y2: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """
    Weighted least-squares null vector of the 8-point system for normalised points.

    Minimises sum_i w_i (y2_i^T F y1_i)^2 subject to ||F|| = 1: the eigenvector of the smallest
    eigenvalue of A^T W A (H&Z Alg. 11.1 (ii), solved through the normal matrix with ``eigh``).

    :param y1: normalised points in image 1, shape (..., N, 2).
    :param y2: normalised points in image 2, shape (..., N, 2).
    :param w: weights, shape (..., N).
    :return: F of the normalised points, shape (..., 3, 3), without rank enforcement.
    """
    A = _design_matrix(y1, y2)                                            # (..., N, 9)
    M = (A * w.unsqueeze(-1)).transpose(-1, -2) @ A                       # (..., 9, 9)
    _, vecs = torch.linalg.eigh(M)
    return vecs[..., 0].reshape(*vecs.shape[:-2], 3, 3)


def enforce_rank2(F: torch.Tensor) -> torch.Tensor:
    """
    Closest rank-2 matrix in Frobenius norm (H&Z Alg. 11.1 (iii), Sec. 11.1.1).

    :param F: matrices, shape (..., 3, 3).
    :return: rank-2 matrices, shape (..., 3, 3). Differentiable while the singular values are
        distinct (the SVD gradient is undefined for repeated singular values).
    """
    U, S, Vh = torch.linalg.svd(F, full_matrices=False)
    S = torch.cat((S[..., :2], torch.zeros_like(S[..., 2:])), dim=-1)
    return U @ (S.unsqueeze(-1) * Vh)


def eight_point(x1: torch.Tensor, x2: torch.Tensor,
                weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """
    Weighted normalised 8-point algorithm (H&Z Alg. 11.1) with rank-2 enforcement.

    Minimises the weighted algebraic error sum_i w_i (x2_i^T F x1_i)^2 in Hartley-normalised
    coordinates, enforces rank 2 and de-normalises (F = T2^T F_n T1).

    Differentiable with respect to ``x1``, ``x2`` and ``weights``, with the usual caveats of
    ``eigh`` and ``svd``: the gradient is infinite or undefined when the two smallest
    eigenvalues of A^T W A coincide (fewer than 8 points in general position, degenerate
    configurations) or when the two non-zero singular values of F coincide; it is noisy near
    such configurations. The sign of F is fixed (largest-magnitude entry positive), so the result
    is a continuous function of the inputs away from those cases.

    :param x1: pixel coordinates in image 1, shape (B, N, 2), N >= 8.
    :param x2: pixel coordinates in image 2, shape (B, N, 2).
    :param weights: optional non-negative weights, shape (B, N); at least 8 positive per row.
    :return: F, shape (B, 3, 3), rank 2, unit Frobenius norm, with x2^T F x1 = 0.
    """
    check_shape(x1, 'x1', ('B', 'N', 2))
    check_shape(x2, 'x2', x1.shape)
    if x1.shape[1] < 8:
        raise ValueError(f'eight_point needs at least 8 correspondences, got {x1.shape[1]}')
    if weights is None:
        weights = torch.ones_like(x1[..., 0])
    check_shape(weights, 'weights', x1.shape[:2])
    y1, T1 = normalize_points(x1, weights)
    y2, T2 = normalize_points(x2, weights)
    Fn = enforce_rank2(_linear_solve(y1, y2, weights.to(x1.dtype)))
    F = T2.transpose(1, 2) @ Fn @ T1
    F = F / F.flatten(1).norm(dim=1).clamp(min=1e-30)[:, None, None]
    return _fix_sign(F)


def essential_from_fundamental(F: torch.Tensor, K1: torch.Tensor, K2: torch.Tensor
                               ) -> torch.Tensor:
    """
    Essential matrix E = K2^T F K1 (H&Z eq. 9.12).

    :param F: fundamental matrices, shape (B, 3, 3).
    :param K1: intrinsics of camera 1, shape (B, 3, 3).
    :param K2: intrinsics of camera 2, shape (B, 3, 3).
    :return: E, shape (B, 3, 3) (not projected onto the essential manifold). Differentiable.
    """
    check_shape(F, 'F', ('B', 3, 3))
    check_shape(K1, 'K1', F.shape)
    check_shape(K2, 'K2', F.shape)
    return K2.transpose(1, 2) @ F @ K1


def fundamental_from_essential(E: torch.Tensor, K1: torch.Tensor, K2: torch.Tensor
                               ) -> torch.Tensor:
    """
    Fundamental matrix F = K2^-T E K1^-1 (H&Z eq. 9.12).

    :param E: essential matrices, shape (B, 3, 3).
    :param K1: intrinsics of camera 1, shape (B, 3, 3).
    :param K2: intrinsics of camera 2, shape (B, 3, 3).
    :return: F, shape (B, 3, 3). Differentiable.
    """
    check_shape(E, 'E', ('B', 3, 3))
    check_shape(K1, 'K1', E.shape)
    check_shape(K2, 'K2', E.shape)
    return torch.linalg.inv(K2).transpose(1, 2) @ E @ torch.linalg.inv(K1)


def project_to_essential(E: torch.Tensor) -> torch.Tensor:
    """
    Closest essential matrix in Frobenius norm (H&Z Sec. 11.7.3, Result 9.17).

    With E = U diag(s1, s2, s3) V^T the result is U diag(s, s, 0) V^T, s = (s1 + s2) / 2.

    :param E: matrices, shape (..., 3, 3).
    :return: essential matrices, shape (..., 3, 3). Differentiable while s2 != s3 and s1 != s2
        (SVD gradient caveat, see :func:`eight_point`).
    """
    if E.dim() < 2 or E.shape[-2:] != (3, 3):
        raise ValueError(f'E must have shape (..., 3, 3), got {tuple(E.shape)}')
    U, S, Vh = torch.linalg.svd(E, full_matrices=False)
    s = S[..., :2].mean(dim=-1, keepdim=True)
    S = torch.cat((s, s, torch.zeros_like(s)), dim=-1)
    return U @ (S.unsqueeze(-1) * Vh)


def _epipolar_terms(F: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor):
    """Return x2^T F x1 (B, N), the lines F x1 (B, N, 3) and F^T x2 (B, N, 3)."""
    check_shape(F, 'F', ('B', 3, 3))
    check_shape(x1, 'x1', (F.shape[0], 'N', 2))
    check_shape(x2, 'x2', x1.shape)
    h1 = to_homogeneous(x1)
    h2 = to_homogeneous(x2)
    l2 = h1 @ F.transpose(1, 2)                                           # F x1, lines in image 2
    l1 = h2 @ F                                                           # F^T x2, in image 1
    return (h2 * l2).sum(-1), l2, l1


def sampson_distance(F: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor,
                     eps: float = 1e-12) -> torch.Tensor:
    """
    First-order geometric error of correspondences, in pixels (NOT squared).

    The square root of the Sampson error of H&Z eq. 11.9:
    ``|x2^T F x1| / sqrt((F x1)_1^2 + (F x1)_2^2 + (F^T x2)_1^2 + (F^T x2)_2^2)``. It
    approximates the distance of (x1, x2) to the nearest exactly matching pair in R^4.

    :param F: fundamental matrices, shape (B, 3, 3).
    :param x1: pixel coordinates in image 1, shape (B, N, 2).
    :param x2: pixel coordinates in image 2, shape (B, N, 2).
    :param eps: keeps the denominator positive.
    :return: distances, shape (B, N). Differentiable (|.| has a kink at 0).
    """
    num, l2, l1 = _epipolar_terms(F, x1, x2)
    den = l2[..., :2].square().sum(-1) + l1[..., :2].square().sum(-1)
    return num.abs() / (den + eps).sqrt()


def epipolar_distance(F: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor,
                      eps: float = 1e-12) -> torch.Tensor:
    """
    Distance of x2 to the epipolar line l2 = F x1 in image 2, in pixels (H&Z Sec. 11.4.3).

    :param F: fundamental matrices, shape (B, 3, 3).
    :param x1: pixel coordinates in image 1, shape (B, N, 2).
    :param x2: pixel coordinates in image 2, shape (B, N, 2).
    :param eps: keeps the denominator positive.
    :return: distances |x2^T F x1| / sqrt(a^2 + b^2), shape (B, N). Differentiable.
    """
    num, l2, _ = _epipolar_terms(F, x1, x2)
    return num.abs() / (l2[..., :2].square().sum(-1) + eps).sqrt()


def epipolar_distance_map(F: torch.Tensor, flow_12: torch.Tensor) -> torch.Tensor:
    """
    Dense point-to-epipolar-line distance D_e for every pixel of image 1 (TrianFlow Sec. 3.3).

    Pixel x1 of image 1 is matched to x2 = x1 + flow_12(x1); the value is the distance of x2 to
    the line F x1 in image 2. TrianFlow's rigid mask is M_r = [D_e < thr] / (1 + D_e).

    :param F: fundamental matrices, shape (B, 3, 3).
    :param flow_12: flow from image 1 to image 2, shape (B, 2, H, W), channel 0 = u.
    :return: D_e in pixels, shape (B, 1, H, W). Differentiable with respect to F and the flow.
    """
    check_shape(F, 'F', ('B', 3, 3))
    check_shape(flow_12, 'flow_12', (F.shape[0], 2, None, None))
    b, _, h, w = flow_12.shape
    grid = pixel_grid(b, h, w, flow_12.device, flow_12.dtype)
    x1 = grid.reshape(b, 2, -1).transpose(1, 2)
    x2 = (grid + flow_12).reshape(b, 2, -1).transpose(1, 2)
    return epipolar_distance(F.to(flow_12.dtype), x1, x2).reshape(b, 1, h, w)


# Monomials of degree <= 3 in the null-space coefficients (x, y, z) of the five-point problem:
# the 10 cubic ones (eliminated) first, then the 10 of degree <= 2 that span the quotient ring.
_CUBIC = ((3, 0, 0), (2, 1, 0), (2, 0, 1), (1, 2, 0), (1, 1, 1), (1, 0, 2), (0, 3, 0),
          (0, 2, 1), (0, 1, 2), (0, 0, 3))
_BASIS = ((2, 0, 0), (1, 1, 0), (1, 0, 1), (0, 2, 0), (0, 1, 1), (0, 0, 2), (1, 0, 0),
          (0, 1, 0), (0, 0, 1), (0, 0, 0))
_MONOMIALS = _CUBIC + _BASIS


def _five_point_tables():
    """
    Product tables of the five-point polynomials and the rows of the action matrix of x.

    A linear polynomial has the 4 coefficients of monomials 16-19 (x, y, z, 1), a quadratic one
    the 10 of monomials 10-19. ``lin_lin`` (16, 10) maps the outer product of two linear
    coefficient vectors (row 4 a + b) to the quadratic product; ``quad_lin`` (40, 20) maps that of
    a quadratic and a linear one (row 4 a + b) to the cubic product over all 20 monomials.
    """
    index = {m: i for i, m in enumerate(_MONOMIALS)}
    n = len(_MONOMIALS)
    product = torch.zeros(n, n, n, dtype=torch.float64)
    for a, ma in enumerate(_MONOMIALS):
        for b, mb in enumerate(_MONOMIALS):
            mc = tuple(i + j for i, j in zip(ma, mb))
            if mc in index:
                product[a, b, index[mc]] = 1.0
    lin_lin = product[16:, 16:, 10:].reshape(16, 10).contiguous()
    quad_lin = product[10:, 16:].reshape(40, n).contiguous()
    # x * basis_j is either a cubic monomial (an elimination row) or again a basis monomial
    source = [(_CUBIC.index(mc), True) if mc in _CUBIC else (_BASIS.index(mc), False)
              for mc in ((m[0] + 1, m[1], m[2]) for m in _BASIS)]
    return (lin_lin, quad_lin, torch.tensor([s for s, _ in source]),
            torch.tensor([c for _, c in source]))


_LIN_LIN, _QUAD_LIN, _ACTION_SOURCE, _ACTION_IS_CUBIC = _five_point_tables()


def five_point(y1: torch.Tensor, y2: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Essential matrices from five correspondences of calibrated rays (minimal solver).

    Gröbner-basis formulation of Stewénius, Engels and Nistér (2006), batched: E lies in the
    4-dimensional null space of the 5 x 9 epipolar system (H&Z eq. 11.3), E = x X + y Y + z Z + W;
    the cubic constraints det(E) = 0 and 2 E E^T E - tr(E E^T) E = 0 (H&Z Result 9.17
    restated) give 10 equations in 20 monomials; eliminating the 10 cubic monomials gives the
    10 x 10 action matrix of multiplication by x, whose eigenvectors are the monomial vectors of
    the (up to 10) solutions.

    :param y1: normalised image coordinates K1^-1 x1 (first two entries), shape (..., 5, 2).
    :param y2: normalised image coordinates K2^-1 x2, shape (..., 5, 2).
    :return: E (..., 10, 3, 3) with y2^T E y1 = 0 (not normalised), and valid (..., 10) bool,
        False for complex or degenerate roots (their E is meaningless). Not differentiable.
    """
    if y1.dim() < 2 or y1.shape[-2:] != (5, 2) or y2.shape != y1.shape:
        raise ValueError(f'y1 and y2 must have shape (..., 5, 2), got {tuple(y1.shape)} and '
                         f'{tuple(y2.shape)}')
    lead = y1.shape[:-2]
    A = _design_matrix(y1, y2).reshape(-1, 5, 9)
    s = A.shape[0]
    # null space: the last 4 columns of the complete QR factorisation of A^T
    Q, _ = torch.linalg.qr(A.transpose(1, 2), mode='complete')
    N = Q[:, :, 5:]                                                       # (S, 9, 4): X Y Z W
    # E_ij as a linear polynomial: 4 coefficients (x, y, z, 1); products of polynomials are
    # outer products of coefficient vectors mapped by the monomial tables (one matmul each)
    E = N.reshape(s, 3, 3, 4)
    lin_lin, quad_lin = _LIN_LIN.to(A), _QUAD_LIN.to(A)
    # E E^T: rows (i, a) x (j, b) of sum_k E_ik,a E_jk,b, then the quadratic product table
    Ea = E.transpose(2, 3).reshape(s, 12, 3)                              # [(i, a), k]
    EEt = (Ea @ Ea.transpose(1, 2)).reshape(s, 3, 4, 3, 4).transpose(2, 3)
    EEt = EEt.reshape(s, 9, 16) @ lin_lin                                 # (S, 9, 10)
    # 2 E E^T E - tr(E E^T) E, all quadratic x linear products, one table product
    EEtE = (EEt.reshape(s, 3, 3, 10).transpose(2, 3).reshape(s, 30, 3) @ E.reshape(s, 3, 12))
    EEtE = EEtE.reshape(s, 3, 10, 3, 4).transpose(2, 3).reshape(s, 9, 10, 4)
    trace = EEt[:, 0] + EEt[:, 4] + EEt[:, 8]                             # (S, 10)
    cubic = (2.0 * EEtE - trace[:, None, :, None] * E.reshape(s, 9, 1, 4)).reshape(s, 9, 40)
    cubic = cubic @ quad_lin                                              # (S, 9, 20)
    # det E = sum_j E_0j C_j with the cofactors C_j = E_1(j+1) E_2(j+2) - E_1(j+2) E_2(j+1)
    # (indices mod 3, read from rows 1-2 repeated twice) of the first row (quadratic)
    E2 = torch.cat((E[:, 1:], E[:, 1:]), dim=2)                           # (S, 2, 6, 4)
    cof = (E2[:, 0, 1:4, :, None] * E2[:, 1, 2:5, None, :]
           - E2[:, 0, 2:5, :, None] * E2[:, 1, 1:4, None, :]).reshape(s, 3, 16) @ lin_lin
    det = (cof.unsqueeze(-1) * E[:, 0].unsqueeze(2)).sum(1).reshape(s, 1, 40) @ quad_lin
    M = torch.cat((cubic, det), dim=1)                                    # (S, 10, 20)
    # Gauss-Jordan elimination: cubic_m = -C[m] . basis; degenerate samples give inf/nan and
    # are flagged below
    C = torch.linalg.solve_ex(M[:, :, :10], M[:, :, 10:])[0]
    eye = torch.eye(10, dtype=A.dtype, device=A.device)
    source = _ACTION_SOURCE.to(A.device)
    action = torch.where(_ACTION_IS_CUBIC.to(A.device)[None, :, None], -C[:, source],
                         eye[source].expand(s, 10, 10))
    action = torch.nan_to_num(action, nan=0.0, posinf=0.0, neginf=0.0)
    vals, vecs = torch.linalg.eig(action)                                 # columns = solutions
    one = vecs[:, 9]                                                      # the monomial 1
    nonzero = one.abs() > 1e-12
    # (x, y, z, 1) of every solution: the eigenvector entries of the monomials x, y, z, 1
    coeff = (vecs[:, 6:] / torch.where(nonzero, one, 1.0).unsqueeze(1)).real   # (S, 4, 10)
    valid = (vals.imag.abs() <= 1e-6 * (1.0 + vals.real.abs())) & nonzero
    Es = (N @ coeff).transpose(1, 2).reshape(s, 10, 3, 3)
    valid = valid & torch.isfinite(Es).flatten(-2).all(-1)
    Es = torch.nan_to_num(Es, nan=0.0, posinf=0.0, neginf=0.0)
    return Es.reshape(*lead, 10, 3, 3), valid.reshape(*lead, 10)
