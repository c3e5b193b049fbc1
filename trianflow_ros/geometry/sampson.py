"""
Pixel Sampson distances of epipolar models on ray coordinates, for many models at once.

The residual functions of the essential / fundamental RANSAC (``ransac.py``) and of the
(R, t) refinement (``essential_refine.py``): point features (:func:`_sampson_features`) make
the algebraic residual and the squared Sampson denominator of K models one matrix product
(H&Z eq. 11.9, exact for any K, also fx != fy or skew).
"""

from typing import Tuple

import torch


# --------------------------------------------------------------------------------------------
# helpers on channels-first homogeneous points y (B, 3, N) = A [x, 1], A affine (K^-1 or a
# Hartley similarity). A model M in y coordinates is the pixel-space model F = A2^T M A1, so
# x2^T F x1 = y2^T M y1 and the first two entries of F x1 are L2 (M y1)_{1,2} with
# L = A[:2, :2]^T: the pixel Sampson distance (H&Z eq. 11.9) is evaluated without forming F in
# badly scaled pixel coordinates (and is exact for any K, also fx != fy or skew).
# --------------------------------------------------------------------------------------------

def _dot_rays(a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """
    Per-point dot products of a (B, K, 3, N) with homogeneous y (B, 3, N), y[:, 2] = 1.

    Two fused multiply-adds instead of a product and a reduction over a size-3 axis.
    """
    return torch.addcmul(torch.addcmul(a[:, :, 2], a[:, :, 0], y[:, None, 0]),
                         a[:, :, 1], y[:, None, 1])


def _residuals(M: torch.Tensor, y1: torch.Tensor, y2: torch.Tensor, L1: torch.Tensor,
               L2: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Algebraic residuals and squared Sampson denominators of H models per pair, all at once.

    :param M: models in y coordinates, shape (B, H, 3, 3) (or (B, 3, 3) for H = 1, squeezed).
    :param y1: shape (B, 3, N).
    :param y2: shape (B, 3, N).
    :param L1: shape (B, 2, 2).
    :param L2: shape (B, 2, 2).
    :return: e = y2^T M y1 (B, H, N) and |grad e|^2 in pixels (B, H, N): the squared pixel
        Sampson distance is e^2 / den (H&Z eq. 11.9).
    """
    single = M.dim() == 3
    if single:
        M = M.unsqueeze(1)
    b, h = M.shape[:2]
    e = _dot_rays((M.reshape(b, h * 3, 3) @ y1).reshape(b, h, 3, -1), y2)
    G1 = (L2.unsqueeze(1) @ M[:, :, :2]).reshape(b, h * 2, 3)            # rows of (F x1)_{1,2}
    G2 = (L1.unsqueeze(1) @ M.transpose(-1, -2)[:, :, :2]).reshape(b, h * 2, 3)
    den = (G1 @ y1).square_().reshape(b, h, 2, -1).sum(2)
    den += (G2 @ y2).square_().reshape(b, h, 2, -1).sum(2)
    den.clamp_(min=1e-30)
    return (e[:, 0], den[:, 0]) if single else (e, den)


def _quadratic_map() -> torch.Tensor:
    """
    Map (18, 17) from two quadratic forms [M | N] (entries 3 i + j) to :func:`_sampson_features`.

    y1^T M y1 + y2^T N y2 (y1[2] = y2[2] = 1) is the dot product of ``[vec M, vec N] @ map``
    with the point features: u v terms land on the products y_a y_b (a, b < 2), linear terms on
    the rows of Z = y2 (x) y1 that hold y1 (6, 7) and y2 (2, 5), constants on its row 8.
    """
    m = torch.zeros(18, 17, dtype=torch.float64)
    for side, quad, lin in ((0, 9, (6, 7)), (1, 13, (2, 5))):
        for i in range(3):
            for j in range(3):
                if i < 2 and j < 2:
                    col = quad + 2 * i + j
                elif i == 2 and j == 2:
                    col = 8
                else:
                    col = lin[min(i, j)]
                m[9 * side + 3 * i + j, col] = 1.0
    return m


_QUAD_MAP = _quadratic_map()


def _sampson_features(y1: torch.Tensor, y2: torch.Tensor) -> torch.Tensor:
    """
    Per-point features (B, 17, N) of :func:`_sampson_rows`, from rays (B, 3, N) with y[2] = 1.

    Rows 0-8: Z = y2 (x) y1 (row 3 i + j = y2_i y1_j); rows 9-12: y1_a y1_b, rows 13-16:
    y2_a y2_b (row 2 a + b, a, b < 2).
    """
    b = y1.shape[0]
    return torch.cat(((y2.unsqueeze(2) * y1.unsqueeze(1)).reshape(b, 9, -1),
                      (y1[:, :2, None] * y1[:, None, :2]).reshape(b, 4, -1),
                      (y2[:, :2, None] * y2[:, None, :2]).reshape(b, 4, -1)), dim=1)


def _sampson_rows(Q: torch.Tensor, L1: torch.Tensor, L2: torch.Tensor, pairwise: bool = True
                  ) -> torch.Tensor:
    """
    Rows (B, 2 K, 17) that give, on :func:`_sampson_features`, the Sampson terms of K models.

    Row k (< K) gives e_k = y2^T Q_k y1; row K + k gives sum_c g_c(Q_0) g_c(Q_k) (pairwise) or
    sum_c g_c(Q_k)^2, where g(Q) = (L2 (Q y1)_{1,2}, L1 (Q^T y2)_{1,2}) are the pixel-gradient
    components of the epipolar residual (H&Z eq. 11.9): the squared Sampson denominator s^2 of
    every model, or, pairwise, that of Q_0 for k = 0 and s ds_k when Q_k is the derivative of
    Q_0 along parameter k. Each g_c is linear in y1 or y2, so the products are quadratic forms
    y1^T M_k y1 + y2^T N_k y2 (M_k = a_0^T a_k or a_k^T a_k with a_k = L2 (Q_k)_{1,2},
    likewise N_k): two values per point and model instead of five.

    :param Q: models (B, K, 3, 3), pairwise: Q_0 the model itself.
    :param L1: shape (B, 2, 2).
    :param L2: shape (B, 2, 2).
    :param pairwise: products with the gradient of Q_0 instead of the model's own.
    """
    b, k = Q.shape[:2]
    a = L2.unsqueeze(1) @ Q[:, :, :2]                                     # (B, K, 2, 3), on y1
    c = L1.unsqueeze(1) @ Q.transpose(-1, -2)[:, :, :2]                   # on y2
    a0, c0 = (a[:, :1], c[:, :1]) if pairwise else (a, c)
    quad = torch.cat(((a0.transpose(-1, -2) @ a).reshape(b, k, 9),
                      (c0.transpose(-1, -2) @ c).reshape(b, k, 9)), dim=2)
    return torch.cat((torch.nn.functional.pad(Q.reshape(b, k, 9), (0, 8)),
                      quad @ _QUAD_MAP.to(Q)), dim=1)


def _model_terms(M: torch.Tensor, W: torch.Tensor, L1: torch.Tensor, L2: torch.Tensor
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Algebraic residuals and squared Sampson denominators (B, K, N) of K models on features W.

    :param M: models in y coordinates, shape (B, K, 3, 3).
    :param W: :func:`_sampson_features` of the points, shape (B, 17, N).
    :return: e = y2^T M y1 and |grad e|^2 in pixels: the squared pixel Sampson distance is
        e^2 / den (H&Z eq. 11.9).
    """
    k = M.shape[1]
    P = _sampson_rows(M, L1, L2, pairwise=False) @ W                       # (B, 2 K, N)
    return P[:, :k], P[:, k:].clamp(min=1e-30)
