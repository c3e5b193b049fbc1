"""
One batched RANSAC framework: MSAC scoring, adaptive stop, local optimisation.

Every robust estimator of the package runs on it: essential / fundamental (``ransac.py``),
homography and pure rotation (``homography.py``) and PnP (``pnp.py``).

An estimator is described once, by an :class:`Estimator`: the minimal sample size, a batched
minimal solver (index sets -> hypotheses), a batched residual function (hypotheses -> residuals
of every point) and, optionally, a weighted refit for the local optimisation. The loop is
generic (the shape of kornia's ``RANSAC``: sample, solve, score, keep the best, polish):

1. :func:`hypothesise`: minimal sets drawn in proportion to the sampling weights with a seeded
   ``torch.Generator`` (:func:`~trianflow_ros.geometry.sampling.sample_minimal_sets`), all of
   a round solved and scored at once with the MSAC quality
   (:func:`~trianflow_ros.geometry.sampling.msac_score`); rounds of ``chunk_sets`` sets until
   the standard bound ``log(1 - p) / log(1 - w^k)`` for the best inlier ratio w so far is met
   (H&Z Sec. 4.7.1), or all sets at once;
2. :func:`local_optimisation`: weighted refits on the inliers of the best hypotheses, with an
   inlier threshold that may shrink geometrically over the rounds (LO-RANSAC, Chum et al. 2003;
   Lebeda et al. 2012), a refit kept only where it raises the score;
3. :func:`ransac`: the two in a row plus the final inliers, for estimators that need nothing
   more. An estimator with its own final refinement (PnP's Levenberg-Marquardt, the essential
   matrix's Gauss-Newton on (R, t)) calls the pieces and adds it.

Every tensor carries the batch first: sampling weights (B, N), hypotheses (B, H, ...),
residuals (B, H, N). Models of any shape work (3x3 matrices, 4x4 poses, lines). Not
differentiable (the search runs under ``no_grad``).
"""

from dataclasses import dataclass
import math
from typing import Any, Callable, Optional, Tuple, Union

import torch

from trianflow_ros.geometry.sampling import msac_score, sample_minimal_sets

Number = Union[float, torch.Tensor]
# a solver returns the hypotheses (B, M, ...) or (hypotheses, valid (B, M) bool)
Solution = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]
# a residual function returns residuals (B, M, N) or (residuals, aux): aux is anything the
# refit's reweighting needs (e.g. Sampson denominators), kept per model by the LO
Residuals = Union[torch.Tensor, Tuple[torch.Tensor, Any]]


@dataclass(frozen=True)
class Estimator:
    """
    What the framework needs to know about one kind of model.

    :ivar sample_size: k, points per minimal set.
    :ivar solve: index sets (B, S, k) -> hypotheses (B, M, ...), M = S times the solutions per
        set (plus any extra hypotheses), or (hypotheses, valid (B, M) bool): an invalid
        hypothesis gets quality -1 and never wins.
    :ivar residuals: hypotheses (B, M, ...) -> residuals (B, M, N) of the scored points
        (``inf`` for an outlier by construction, e.g. a point behind the camera), or
        (residuals, aux) with aux a tensor of the same batch shape or None.
    :ivar squared: the residuals are squared distances (else distances, squared for scoring).
    :ivar refit: local optimisation: per-point weights (B, K, N) -> K models (B, K, ...), a
        weighted least-squares fit; None: no local optimisation.
    :ivar reweight: (inlier weights (B, K, N), aux of the current models) -> the weights given
        to ``refit`` (e.g. divided by Sampson denominators); None: the inlier weights.
    :ivar min_refit_points: a refit needs this many positive weights (default ``sample_size``).
    """

    sample_size: int
    solve: Callable[[torch.Tensor], Solution]
    residuals: Callable[[torch.Tensor], Residuals]
    squared: bool = True
    refit: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    reweight: Optional[Callable[[torch.Tensor, Any], torch.Tensor]] = None
    min_refit_points: Optional[int] = None

    def evaluate(self, models: torch.Tensor) -> Tuple[torch.Tensor, Any]:
        """Return the residuals (B, M, N) of hypotheses (B, M, ...) and their aux (or None)."""
        out = self.residuals(models)
        return out if isinstance(out, tuple) else (out, None)

    def squares(self, r: torch.Tensor) -> torch.Tensor:
        """Return the squared residuals, for the MSAC score."""
        return r if self.squared else r.square()


@dataclass(frozen=True)
class Threshold:
    """
    An inlier threshold, squared (for the MSAC score) and in the units of the residuals.

    :ivar squared: t^2, a number or a tensor broadcastable to (B, H, N), e.g. (B, 1, 1).
    :ivar distance: t, needed only by estimators whose residuals are distances.
    """

    squared: Number
    distance: Optional[Number] = None

    @staticmethod
    def of(distance: Number) -> 'Threshold':
        """Build the threshold t (a number or a (B, 1, 1) tensor) with its square."""
        return Threshold(distance ** 2, distance)

    def scaled(self, est: Estimator, span: float) -> Number:
        """Return ``span`` times the threshold, in the units of ``est``'s residuals."""
        return self.squared * span ** 2 if est.squared else self.distance * span


@dataclass(frozen=True)
class Hypotheses:
    """
    Hypotheses of :func:`hypothesise`.

    :ivar models: (B, M, ...), all rounds concatenated.
    :ivar quality: their MSAC quality (B, M), -1 for invalid hypotheses.
    :ivar sets: minimal sets drawn per batch element.
    """

    models: torch.Tensor
    quality: torch.Tensor
    sets: int


@dataclass(frozen=True)
class Fit:
    """
    Result of :func:`local_optimisation` / :func:`ransac` (one or K models per element).

    :ivar models: (B, K, ...).
    :ivar residuals: their residuals (B, K, N), as the estimator returns them.
    :ivar score: their MSAC quality (B, K).
    """

    models: torch.Tensor
    residuals: torch.Tensor
    score: torch.Tensor

    def choice(self) -> torch.Tensor:
        """Return the index (B,) of the best of the K models per element."""
        return self.score.argmax(dim=1)

    def best(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return the best of the K models per element: model, residuals (B, N), score (B,)."""
        ar = torch.arange(self.score.shape[0], device=self.score.device)
        choice = self.choice()
        return self.models[ar, choice], self.residuals[ar, choice], self.score[ar, choice]


def sets_needed(inlier_ratio: torch.Tensor, sample_size: int, confidence: float
                ) -> torch.Tensor:
    """
    Return the RANSAC bound log(1 - p) / log(1 - w^k) (H&Z Sec. 4.7.1) per element, float64.

    :param inlier_ratio: w, best inlier ratio so far, shape (B,).
    :param sample_size: k.
    :param confidence: p, the probability of drawing at least one all-inlier set.
    """
    miss = (1.0 - inlier_ratio.double() ** sample_size).clamp(1e-12, 1.0 - 1e-12)
    return math.log(1.0 - confidence) / torch.log(miss)


def hypothesise(est: Estimator, sample_weights: torch.Tensor, score_weights: torch.Tensor,
                threshold: Threshold, max_sets: int, *, chunk_sets: Optional[int] = None,
                confidence: Optional[float] = None, min_sets: int = 0,
                count_threshold: Optional[Number] = None,
                generator: Optional[torch.Generator] = None) -> Hypotheses:
    """
    Draw, solve and score minimal sets, in rounds until the adaptive bound is met.

    :param est: the estimator.
    :param sample_weights: sampling weights (B, N'), of the points the sets index.
    :param score_weights: weights (B, N) of the scored points (those of ``est.residuals``).
    :param threshold: the scoring threshold.
    :param max_sets: at most this many minimal sets per element.
    :param chunk_sets: sets per round; None: all ``max_sets`` in one round.
    :param confidence: p of the adaptive stop: after a round, stop once every element has drawn
        :func:`sets_needed` sets for the best weighted ratio of points with residual below
        ``count_threshold`` (default: the threshold) among its valid hypotheses; None: no stop.
    :param min_sets: never stop before this many sets (capped at ``max_sets``).
    :param count_threshold: the inlier threshold of the ratio, in the units of the residuals.
    :param generator: torch.Generator on the weights' device, for reproducible draws.
    """
    b = sample_weights.shape[0]
    chunk = max_sets if chunk_sets is None else chunk_sets
    floor = min(max_sets, min_sets)
    sw = score_weights.unsqueeze(1)
    if confidence is not None:
        wsum = score_weights.sum(1).clamp(min=1e-30)
        best_ratio = score_weights.new_zeros(b)
        if count_threshold is None:
            count_threshold = threshold.scaled(est, 1.0)
    all_models, all_quality = [], []
    drawn = 0
    with torch.no_grad():
        while drawn < max_sets:
            sets = min(chunk, max_sets - drawn)
            idx = sample_minimal_sets(sample_weights, est.sample_size, sets, generator)
            out = est.solve(idx)
            models, valid = out if isinstance(out, tuple) else (out, None)
            r, _ = est.evaluate(models)
            quality = msac_score(est.squares(r), threshold.squared, sw)
            if valid is not None:
                quality = torch.where(valid, quality, -1.0)
            all_models.append(models)
            all_quality.append(quality)
            drawn += sets
            if confidence is None:
                continue
            ratio = ((r < count_threshold).to(sw.dtype) @ score_weights.unsqueeze(-1)
                     ).squeeze(-1) / wsum.unsqueeze(1)
            if valid is not None:
                ratio = torch.where(valid, ratio, 0.0)
            best_ratio = torch.maximum(best_ratio, ratio.amax(1))
            if drawn >= floor and bool(
                    (sets_needed(best_ratio, est.sample_size, confidence) <= drawn).all()):
                break
    if len(all_models) == 1:
        return Hypotheses(all_models[0], all_quality[0], drawn)
    return Hypotheses(torch.cat(all_models, 1), torch.cat(all_quality, 1), drawn)


def top_hypotheses(hyps: Hypotheses, k: int) -> torch.Tensor:
    """Return the k (at most all) best hypotheses per element, best first: (B, k, ...)."""
    k = min(k, hyps.models.shape[1])
    pick = hyps.quality.topk(k, dim=1).indices
    ar = torch.arange(pick.shape[0], device=pick.device)[:, None]
    return hyps.models[ar, pick]


def local_optimisation(est: Estimator, models: torch.Tensor, weights: torch.Tensor,
                       threshold: Threshold, iters: int, *, span: float = 1.0,
                       follow_candidate: bool = False,
                       score: Optional[torch.Tensor] = None) -> Fit:
    """
    LO-MSAC: ``iters`` weighted refits of K models per element on their inliers.

    Round i refits on the points whose residual is below ``span ** ((iters - 1 - i) /
    (iters - 1))`` thresholds (shrinking from ``span`` to 1; Lebeda et al. 2012), weighted by
    ``weights`` (and ``est.reweight``); a refit with fewer than ``est.min_refit_points``
    positive weights is dropped; one that raises the score replaces the model.

    :param est: the estimator, with ``refit``.
    :param models: the starting models (B, K, ...).
    :param weights: point weights (B, N) of the score and the refits.
    :param threshold: the final inlier threshold.
    :param iters: refit rounds (0: only the residuals and scores of ``models``).
    :param span: the first round's threshold, in multiples of the final one.
    :param follow_candidate: the next round starts from every usable refit (a path towards the
        final threshold) instead of from the best model so far.
    :param score: the MSAC quality (B, K) of ``models`` if known (else computed).
    :return: :class:`Fit` of the K best models seen.
    """
    min_points = est.sample_size if est.min_refit_points is None else est.min_refit_points
    wk = weights.unsqueeze(1)
    with torch.no_grad():
        r, aux = est.evaluate(models)
        if score is None:
            score = msac_score(est.squares(r), threshold.squared, wk)
        cur_r, cur_aux = r, aux
        for it in range(iters):
            s = span ** ((iters - 1 - it) / (iters - 1)) if iters > 1 else 1.0
            lo_w = wk * (cur_r < threshold.scaled(est, s))
            if est.reweight is not None:
                lo_w = est.reweight(lo_w, cur_aux)
            usable = (lo_w > 0).sum(-1) >= min_points
            cand = est.refit(lo_w)
            cand_r, cand_aux = est.evaluate(cand)
            cand_score = msac_score(est.squares(cand_r), threshold.squared, wk)
            better = (cand_score > score) & usable
            if follow_candidate:
                cur_r = torch.where(usable[..., None], cand_r, cur_r)
                if cur_aux is not None:
                    cur_aux = torch.where(usable[..., None], cand_aux, cur_aux)
            score = torch.where(better, cand_score, score)
            models = torch.where(better.reshape(better.shape + (1,) * (models.dim() - 2)),
                                 cand, models)
            r = torch.where(better[..., None], cand_r, r)
            if not follow_candidate:
                cur_r = r
                if cur_aux is not None:
                    cur_aux = torch.where(better[..., None], cand_aux, cur_aux)
    return Fit(models, r, score)


def ransac(est: Estimator, weights: torch.Tensor, threshold: Threshold, num_hypotheses: int,
           lo_iters: int, *, generator: Optional[torch.Generator] = None, **sampling
           ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    Run the whole loop: hypotheses, the best one, its local optimisation, its inliers.

    :param est: the estimator (with ``refit`` when ``lo_iters`` > 0).
    :param weights: sampling and scoring weights (B, N); 0 excludes a point.
    :param threshold: the inlier threshold.
    :param num_hypotheses: minimal sets per element (fewer with an adaptive stop).
    :param lo_iters: local-optimisation rounds.
    :param generator: torch.Generator on the weights' device, for reproducible draws.
    :param sampling: ``chunk_sets``, ``confidence``, ``min_sets`` of :func:`hypothesise`.
    :return: the model (B, ...), its inliers (B, N) bool (residual below the threshold,
        positive weight) and its MSAC quality (B,).
    """
    if num_hypotheses < 1 or lo_iters < 0:
        raise ValueError(f'need num_hypotheses >= 1 and lo_iters >= 0, got {num_hypotheses} '
                         f'and {lo_iters}')
    hyps = hypothesise(est, weights, weights, threshold, num_hypotheses, generator=generator,
                       **sampling)
    ar = torch.arange(weights.shape[0], device=weights.device)
    best = hyps.quality.argmax(dim=1)
    fit = local_optimisation(est, hyps.models[ar, best].unsqueeze(1), weights, threshold,
                             lo_iters, score=hyps.quality[ar, best].unsqueeze(1))
    model, _, score = fit.best()
    inliers = (fit.residuals < threshold.scaled(est, 1.0)) & (weights > 0).unsqueeze(1)
    return model, inliers[ar, fit.choice()], score
