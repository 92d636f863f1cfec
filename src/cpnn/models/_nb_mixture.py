"""Negative-binomial mixture of cell-type profiles: the solver behind ``cp.pp.deconvolve(method="nb")``.

``counts[n, g] ~ NB(mean = s[g] * sum_k h[n, k] A[g, k], theta[g])``, with ``A[:, k]`` the k-th
cell type's gene distribution (its prototype normalised to sum 1), ``h[n] >= 0`` the spot's
counts attributed to each type (its composition is ``h[n] / sum(h[n])``), ``s`` a per-gene
technical scaling shared by all spots (geometric mean 1; cell2location's ``m_g``) and ``theta``
a per-gene inverse dispersion. Maximum likelihood by block updates that each raise it (up to
float32 rounding), the ``h`` updates accelerated per spot by SQUAREM extrapolation:

- ``h`` and ``s``: the multiplicative minorise-maximise updates of negative-binomial matrix
  factorisation (Gouvert, Oberlin & Fevotte 2020): Jensen's bound on ``x log mu`` and the
  tangent of ``-(x + theta) log(theta + mu)``, maximised in closed form;
- ``theta``: a per-gene Newton step on ``log theta`` (exact score and curvature; the
  ``lgamma``/``digamma`` terms on the non-zero counts only), halved where it would lower the
  gene's likelihood.

Optionally one more column of ``A``, an *unexplained* profile ``d`` (sums to 1): flat (every gene
alike, times its scaling ``s``), or learned with the shared parameters by the same multiplicative
update (stereoscope's "dummy" cell type). Expression that no reference type explains is attributed
to it instead of being spread over the types.

Two stages: the shared ``s`` and ``theta`` on a subsample of spots (:func:`fit_shared`), then
every spot's ``h`` with them fixed (:func:`solve_compositions`), chunk by chunk: spots are then
independent, no autograd graph is kept and two preallocated spots x genes buffers are reused, so
memory is bounded by the chunk, not the table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ._losses import nb_count_terms, nb_zero_count_terms

#: Smallest mean allowed in a division.
_TINY = 1e-10
#: Smallest share of a spot's counts kept per type: a type never dies, so a later update can revive it.
_FLOOR = 1e-10
#: Largest SQUAREM step length.
_MAX_STEP = 64.0
#: Largest mean count per gene a spot is solved at: deeper libraries are scaled down to it (see :func:`cap_depth`).
DEPTH_PER_GENE = 1000.0


def cap_depth(X: np.ndarray, per_gene: float = DEPTH_PER_GENE) -> np.ndarray:
    """The counts a spot's composition is solved from: whole-number units, at most ``per_gene`` a gene on average.

    A row whose counts share a common factor (counts multiplied by a constant) is divided by it:
    whole-number counts carry their unit, so that factor is no information. A row deeper than
    ``per_gene`` counts per gene is then scaled down to that depth: at bulk depth (1e7 counts and
    more) the negative binomial's overdispersion dominates its Poisson noise and the
    multiplicative updates move by about ``theta / mu`` a step, so a fit stalls far from its
    optimum, while a row's composition does not depend on its depth. Spatial spots (far
    shallower, with counts of 1) are left as they are.
    """
    X = np.asarray(X, dtype=np.float64)
    smallest = np.where(X > 0, X, np.inf).min(1)
    scaled = np.flatnonzero(np.isfinite(smallest) & (smallest > 1))
    if len(scaled):
        X = X.copy()
        for i in scaled:
            row = X[i]
            if np.array_equal(row, np.round(row)):
                factor = np.gcd.reduce(row[row > 0].astype(np.int64))
                if factor > 1:
                    X[i] = row / factor
    cap = per_gene * X.shape[1]
    totals = X.sum(1, keepdims=True)
    if not (totals > cap).any():
        return X
    return np.where(totals > cap, X * (cap / np.maximum(totals, 1.0)), X)


@dataclass
class NBMixtureFit:
    """Shared per-gene parameters: technical scaling (geometric mean 1) and inverse dispersion."""

    gene_scaling: np.ndarray
    theta: np.ndarray
    n_iter: int
    converged: bool
    nll_history: list[float]
    #: the unexplained profile (G, sums to 1), or ``None`` when the fit has none
    unexplained: np.ndarray | None = None

    def dictionary(self, A: np.ndarray) -> np.ndarray:
        """``A`` (G x K) with the unexplained profile as its last column when the fit has one."""
        return A if self.unexplained is None else np.column_stack([A, self.unexplained])


class _Buffers:
    """Two spots x genes work arrays, reused by every update of a chunk (no allocation per iteration)."""

    def __init__(self) -> None:
        self.shape: tuple[int, int] | None = None

    def get(self, n: int, g: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self.shape is None or self.shape[0] < n or self.shape[1] != g:
            self.shape = (n, g)
            self.mu = torch.empty(n, g, device=device)
            self.work = torch.empty(n, g, device=device)
        return self.mu[:n], self.work[:n]


def _h_step(H: torch.Tensor, X: torch.Tensor, B: torch.Tensor, theta: torch.Tensor, buf: _Buffers) -> torch.Tensor:
    """One multiplicative update of ``H`` (n x K) for ``mu = H @ B`` (``B``: K x G), in the two buffers."""
    mu, work = buf.get(X.shape[0], X.shape[1], X.device)
    torch.mm(H, B, out=mu)
    mu.clamp_(min=_TINY)
    torch.div(X, mu, out=work)
    up = work @ B.T
    torch.add(X, theta, out=work)
    mu.add_(theta)
    work.div_(mu)
    down = work @ B.T
    H = H * up / down.clamp_min(_TINY)
    return torch.maximum(H, _FLOOR * H.sum(1, keepdim=True))


def _shares(H: torch.Tensor) -> torch.Tensor:
    return H / H.sum(1, keepdim=True).clamp_min(_TINY)


def _squarem_cycle(
    H: torch.Tensor, X: torch.Tensor, B: torch.Tensor, theta: torch.Tensor, buf: _Buffers
) -> torch.Tensor:
    """Two plain updates, a per-spot extrapolation along them (SQUAREM, Varadhan & Roland 2008), one more update.

    The step length is bounded; a spot whose extrapolation is not finite keeps its second plain update.
    """
    H1 = _h_step(H, X, B, theta, buf)
    H2 = _h_step(H1, X, B, theta, buf)
    r = H1 - H
    v = H2 - H1 - r
    alpha = -(r.norm(dim=1, keepdim=True) / v.norm(dim=1, keepdim=True).clamp_min(1e-30)).clamp(1.0, _MAX_STEP)
    Hx = torch.maximum(H - 2 * alpha * r + alpha**2 * v, _FLOOR * H2.sum(1, keepdim=True))
    Hx = torch.where(torch.isfinite(Hx).all(1, keepdim=True), Hx, H2)
    return _h_step(Hx, X, B, theta, buf)


def _solve(
    H: torch.Tensor, X: torch.Tensor, B: torch.Tensor, theta: torch.Tensor, buf: _Buffers, *, max_iter: int, tol: float
) -> tuple[torch.Tensor, int]:
    """Iterate the ``H`` update to convergence, in SQUAREM cycles of three updates.

    A spot is done when its composition moved by at most ``tol`` over a cycle; later cycles
    work on the spots not done only. Returns ``H`` and the number of updates of the slowest spot.
    """
    active = torch.arange(X.shape[0], device=X.device)
    Xa, Ha = X, H  # the spots not done; copied only when some finish
    shares = _shares(Ha)
    updates = 0
    while updates < max_iter and len(active):
        Ha = _squarem_cycle(Ha, Xa, B, theta, buf)
        updates += 3
        new = _shares(Ha)
        moved = (new - shares).abs().amax(1)
        H[active] = Ha
        shares = new
        going = moved > tol
        if not going.all():
            active, Xa, Ha, shares = active[going], Xa[going], Ha[going], shares[going]
    return H, updates


def solve_compositions(
    counts: np.ndarray,
    A: np.ndarray,
    fit: NBMixtureFit,
    *,
    device: torch.device,
    max_iter: int = 300,
    tol: float = 1e-4,
) -> tuple[np.ndarray, int]:
    """Compositions of the spots ``counts`` (n x G dense, every row with a count) with the shared parameters fixed.

    ``A``: G x K, columns sum to 1. Returns the compositions (n x K, rows sum to 1; n x (K + 1)
    with the fit's unexplained profile last) and the updates of the slowest spot. A spot is done
    when its composition moves by at most ``tol`` over one SQUAREM cycle (three updates), or after
    ``max_iter`` updates. Spots are independent: any split of the spots into calls gives the same
    compositions.
    """
    A = fit.dictionary(A)
    B = torch.as_tensor(A.T * fit.gene_scaling[None, :], dtype=torch.float32, device=device).contiguous()
    theta = torch.as_tensor(fit.theta, dtype=torch.float32, device=device)
    X = torch.as_tensor(cap_depth(counts), dtype=torch.float32, device=device)
    K = A.shape[1]
    H = X.sum(1, keepdim=True) / K * torch.ones(1, K, device=device)
    H, updates = _solve(H, X, B, theta, _Buffers(), max_iter=max_iter, tol=tol)
    return _shares(H).cpu().numpy().astype(np.float64), updates


def _gene_loglik(
    X: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, nz: tuple[torch.Tensor, ...] | None = None
) -> torch.Tensor:
    """Per gene (column), the NB log-likelihood summed over spots, without the ``lgamma(x + 1)`` constant.

    The ``lgamma`` terms, which vanish for zero counts, are evaluated on the non-zero counts only
    (``nz``: ``X``'s non-zero positions, found here when not given).
    """
    log_tm = torch.log(theta + mu)
    dense = nb_zero_count_terms(theta, torch.log(theta), log_tm).sum(0)
    nz = torch.nonzero(X, as_tuple=True) if nz is None else nz
    part = nb_count_terms(X[nz], torch.log(mu[nz]), log_tm[nz], theta[nz[1]])
    return dense.index_add_(0, nz[1], part)


def _theta_step(
    X: torch.Tensor, mu: torch.Tensor, log_theta: torch.Tensor, before: torch.Tensor, nz: tuple[torch.Tensor, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """A Newton step on ``log theta`` per gene; where it lowers the gene's likelihood, halved (up to 4 times).

    (Lowers beyond float32 rounding, 1e-5 relative: a gene already at its optimum keeps its step.)

    Genes are separable given ``mu``, so each halving re-evaluates only the genes still waiting.
    ``nz``: ``X``'s non-zero positions.
    """
    theta = torch.exp(log_theta)
    tm = theta + mu
    x_nz, th_nz = X[nz], theta[nz[1]]
    d1 = (torch.log(theta) + 1 - torch.log(tm) - (X + theta) / tm).sum(0)
    d1.index_add_(0, nz[1], torch.digamma(x_nz + th_nz) - torch.digamma(th_nz))
    d2 = (1 / theta - 2 / tm + (X + theta) / tm**2).sum(0)
    d2.index_add_(0, nz[1], torch.polygamma(1, x_nz + th_nz) - torch.polygamma(1, th_nz))
    g1 = theta * d1  # d / d log theta
    g2 = theta * d1 + theta**2 * d2
    step = torch.where(g2 < 0, -g1 / g2.clamp_max(-1e-12), torch.sign(g1) * 0.5).clamp(-2.0, 2.0)
    low, high = float(np.log(1e-2)), float(np.log(1e6))
    best, best_ll = log_theta.clone(), before.clone()
    waiting = torch.arange(len(log_theta), device=X.device)
    for _ in range(5):
        trial = (log_theta[waiting] + step[waiting]).clamp(low, high)
        ll = _gene_loglik(X[:, waiting], mu[:, waiting], torch.exp(trial))
        better = ll >= before[waiting] - 1e-5 * before[waiting].abs()  # float32 sums: equal within rounding
        best[waiting[better]] = trial[better]
        best_ll[waiting[better]] = ll[better]
        waiting = waiting[~better]
        step[waiting] = step[waiting] / 2
        waiting = waiting[step[waiting].abs() > 1e-3]  # a step this small leaves the gene where it was
        if len(waiting) == 0:
            break
    return best, best_ll


def fit_shared(
    X: np.ndarray,
    A: np.ndarray,
    *,
    device: torch.device,
    max_iter: int = 100,
    tol: float = 1e-4,
    inner: int = 30,
    inner_tol: float = 1e-3,
    theta_init: float = float(np.exp(2.0)),
    scaling_prior: float = 0.0,
    unexplained: str | None = None,
) -> NBMixtureFit:
    """Fit the per-gene scaling and dispersion on the spots ``X`` (n x G dense counts), ``A`` (G x K).

    Each round updates every spot's ``h``, then ``s``, then ``theta``; stops when the mean
    negative log-likelihood per spot (with the prior's term) changes by less than ``tol``
    (relative) between rounds.

    ``scaling_prior``: shape ``a`` of a Gamma(a, a) prior on each ``s_g`` (mean 1, sd of
    ``log s_g`` about ``1 / sqrt(a)``); the ``s`` update is then the MAP one,
    ``(sum_n x + a - 1) / (down + a)``. ``0``: maximum likelihood, ``s`` re-centred to geometric
    mean 1 every round (the likelihood cannot tell ``s`` from the spots' totals). With a prior the
    fit keeps its own scale; the returned ``s`` is re-centred either way (the compositions do not
    depend on ``s``'s overall scale).

    ``unexplained``: one more profile (last row of the dictionary, sums to 1): ``"flat"`` keeps it
    at ``1 / G``; ``"learned"`` starts it there and updates it each round, after ``h``, by its own
    multiplicative step.
    """
    Xt = torch.as_tensor(cap_depth(X), dtype=torch.float32, device=device)
    if unexplained:
        A = np.column_stack([A, np.full(A.shape[0], 1.0 / A.shape[0])])
    At = torch.as_tensor(A.T, dtype=torch.float32, device=device).contiguous()  # K x G
    n, G = Xt.shape
    K = At.shape[0]
    gene_total = Xt.sum(0)
    nz = torch.nonzero(Xt, as_tuple=True)  # the counts never change: found once
    s = torch.ones(G, device=device)
    log_theta = torch.full((G,), float(np.log(theta_init)), device=device)
    H = Xt.sum(1, keepdim=True).clamp_min(1.0) / K * torch.ones(1, K, device=device)
    buf = _Buffers()
    history: list[float] = []
    converged = False
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007
        theta = torch.exp(log_theta)
        H, _ = _solve(H, Xt, At * s, theta, buf, max_iter=inner, tol=inner_tol)
        if unexplained == "learned":  # the same bound for the last dictionary row (s_g cancels), then back to sum 1
            mu = (H @ (At * s)).clamp_min(_TINY)
            h = H[:, -1:]
            up = (h * Xt / mu).sum(0)
            down = (h * (Xt + theta) / (theta + mu)).sum(0)
            d = (At[-1] * up / down.clamp_min(_TINY)).clamp_min(_TINY)
            total = d.sum()
            At[-1] = d / total
            H[:, -1] *= total
        # s: the same bound, per gene; with mu = s_g q_gn the update s * (sum_n q x / mu) / down is
        # sum_n x / down
        Q = H @ At  # n x G
        down = (Q * (Xt + theta) / (theta + Q * s)).sum(0)
        if scaling_prior > 0:  # MAP under Gamma(a, a): the bound's maximiser with the prior's terms added
            s = ((gene_total + scaling_prior - 1).clamp_min(0) / (down + scaling_prior)).clamp_min(_TINY)
        else:
            s = (gene_total / down.clamp_min(_TINY)).clamp_min(_TINY)
            centre = torch.exp(torch.log(s).mean())
            s, H = s / centre, H * centre  # mu unchanged; geometric mean of s is 1
        mu = (H @ (At * s)).clamp_min(_TINY)
        before = _gene_loglik(Xt, mu, theta, nz)
        log_theta, ll = _theta_step(Xt, mu, log_theta, before, nz)
        log_prior = (
            ((scaling_prior - 1) * torch.log(s) - scaling_prior * s).sum() if scaling_prior > 0 else 0.0
        )  # up to a constant
        nll = float(-(ll.sum() + log_prior) / n)
        history.append(nll)
        # the likelihood is that of counts capped at DEPTH_PER_GENE a gene (cap_depth), so its relative change
        # means the same at any sequencing depth
        if len(history) > 1 and abs(history[-2] - nll) <= tol * max(abs(nll), 1.0):
            converged = True
            break
    s = s / torch.exp(torch.log(s).mean())
    return NBMixtureFit(
        gene_scaling=s.cpu().numpy().astype(np.float64),
        theta=torch.exp(log_theta).cpu().numpy().astype(np.float64),
        n_iter=it,
        converged=converged,
        nll_history=history,
        unexplained=At[-1].cpu().numpy().astype(np.float64) if unexplained else None,
    )
