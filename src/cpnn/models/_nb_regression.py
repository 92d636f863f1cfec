"""Negative-binomial regression of single-cell counts on cell type (the paper's prototype estimator).

``counts[n, g] ~ NB(mean = library[n] * exp(rho[type[n], g] + beta[batch[n], g]), theta[g])``,
fitted by MAP with Fisher scoring (block coordinate: type rates, batch effects, dispersions).
``beta`` is centred over batches, so the prototypes ``exp(rho)`` are the batch-free rates, and
carries a normal prior. This is *not* cell2location's ``RegressionModel``, which the authors use:
that model has no per-cell library offset (a per-batch scalar detection instead), an additive
per-batch background, and reports a posterior mean after variational inference. Measured on the
CID4465 cells, the two estimators' prototypes agree at per-type Pearson 0.998.

Every parameter belongs to one gene, so each scoring step is a handful of vectorised passes
over the cells; terms that vanish for zero counts (lgamma, digamma) are evaluated on the
non-zero entries only. Cells are processed in chunks, so memory stays bounded for large atlases.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import sparse
from tqdm.auto import tqdm

from ._losses import nb_count_terms, nb_zero_count_terms


@dataclass
class NBRegressionResult:
    """Fitted rates (K x G, per unit of mean library size), batch effects (B x G), inverse dispersions (G)."""

    rates: np.ndarray
    batch_effects: np.ndarray
    theta: np.ndarray
    loss_history: list[float]
    n_iter: int


class _Chunk:
    """One chunk of cells: group codes, log library sizes, and the non-zero counts."""

    def __init__(self, X: sparse.csr_matrix, rows: slice, ct, bt, log_lib, device: str) -> None:
        block = X[rows].tocoo()
        self.n = block.shape[0]
        self.row = torch.as_tensor(block.row, dtype=torch.long, device=device)
        self.col = torch.as_tensor(block.col, dtype=torch.long, device=device)
        self.y = torch.as_tensor(block.data, dtype=torch.float32, device=device)
        self.ct, self.bt, self.log_lib = ct[rows], bt[rows], log_lib[rows]
        self.lgamma_y1 = float(torch.lgamma(self.y + 1.0).sum())


def _accumulate(chunks, rho, beta, theta, what: str, n_types: int, n_batches: int, device: str):
    """Sum score and Fisher information over cells, per (type|batch, gene), or per gene for theta."""
    g = rho.shape[1]
    rows = n_types if what == "rho" else n_batches if what == "beta" else 1
    score = torch.zeros(rows, g, device=device, dtype=torch.float64)
    info = torch.zeros(rows, g, device=device, dtype=torch.float64)
    loglik = 0.0
    log_theta = torch.log(theta)
    for c in chunks:
        mu = torch.exp(c.log_lib[:, None] + rho[c.ct] + beta[c.bt])
        inv = 1.0 / (theta[None, :] + mu)
        y_nz = c.y
        inv_nz = inv[c.row, c.col]
        th_nz = theta[c.col]
        if what in ("rho", "beta"):
            # d loglik / d eta = theta (y - mu) / (theta + mu); Fisher info = theta mu / (theta + mu)
            fi = theta[None, :] * mu * inv
            s = (-fi).index_put((c.row, c.col), th_nz * y_nz * inv_nz, accumulate=True)
            codes = c.ct if what == "rho" else c.bt
            score.index_add_(0, codes, s.double())
            info.index_add_(0, codes, fi.double())
        else:
            # derivatives in phi = log(theta); digamma/trigamma terms vanish where y == 0
            d1 = (log_theta[None, :] + 1.0 - torch.log(theta[None, :] + mu) - theta[None, :] * inv).sum(0)
            d2 = (1.0 / theta[None, :] - 2.0 * inv + theta[None, :] * inv**2).sum(0)
            d1_nz = torch.digamma(y_nz + th_nz) - torch.digamma(th_nz) - y_nz * inv_nz
            d2_nz = torch.polygamma(1, y_nz + th_nz) - torch.polygamma(1, th_nz) + y_nz * inv_nz**2
            d1 = d1.index_add(0, c.col, d1_nz)
            d2 = d2.index_add(0, c.col, d2_nz)
            grad = theta * d1
            hess = theta**2 * d2 + grad
            score[0] += grad.double()
            info[0] += hess.double()
        if what == "theta":  # log-likelihood at the current parameters, for the history
            log_tm = torch.log(theta[None, :] + mu)
            dense = nb_zero_count_terms(theta[None, :], log_theta[None, :], log_tm).sum()
            nz = nb_count_terms(y_nz, torch.log(mu[c.row, c.col]), log_tm[c.row, c.col], th_nz).sum()
            loglik += float(dense + nz) - c.lgamma_y1
    return score, info, loglik


def fit_nb_regression(
    X,
    cell_type: np.ndarray,
    n_types: int,
    *,
    batch: np.ndarray | None = None,
    n_batches: int = 1,
    library: np.ndarray,
    n_iter: int = 30,
    progress: bool = False,
    tol: float = 1e-5,
    batch_prior_sd: float = 0.5,
    chunk_elements: int = 20_000_000,
    device: str = "cpu",
) -> NBRegressionResult:
    """Fit the NB regression; see the module docstring for the model.

    Parameters
    ----------
    X
        Cells x genes raw counts (dense or sparse).
    cell_type
        Cell-type code of each cell.
    batch
        Batch (donor) code of each cell.
    n_types
        Number of cell types.
    n_batches
        Number of batches.
    library
        Library size per cell (total counts over all genes).
    n_iter
        Most Fisher-scoring rounds (each updates rates, batch effects and dispersions).
    progress
        Show a progress bar of the rounds.
    tol
        Stop when the loss (negative log-posterior per cell) changes by less than this, relatively.
    batch_prior_sd
        Standard deviation of the normal prior on the log batch effects.
    chunk_elements
        Cells are processed in chunks of at most this many cells x genes entries.
    device
        Torch device.
    """
    X = sparse.csr_matrix(X, dtype=np.float32)
    n, g = X.shape
    lib = np.maximum(np.asarray(library, dtype=np.float64), 1.0)
    lib_scale = float(np.mean(lib))
    ct = torch.as_tensor(np.asarray(cell_type, dtype=np.int64), device=device)
    use_batch = batch is not None and n_batches > 1
    bt = torch.as_tensor(np.asarray(batch if use_batch else np.zeros(n), dtype=np.int64), device=device)
    log_lib = torch.as_tensor(np.log(lib / lib_scale), dtype=torch.float32, device=device)
    step = max(1, chunk_elements // max(g, 1))
    chunks = [_Chunk(X, slice(i, min(i + step, n)), ct, bt, log_lib, device) for i in range(0, n, step)]

    # closed-form Poisson estimate as the starting point
    onehot = sparse.csr_matrix((np.ones(n), (np.asarray(cell_type), np.arange(n))), shape=(n_types, n))
    sums = (onehot @ X).toarray().astype(np.float64)
    rho = torch.as_tensor(
        np.log((sums + 0.1) / (onehot @ (lib / lib_scale))[:, None]), dtype=torch.float32, device=device
    )
    beta = torch.zeros(max(n_batches, 1), g, device=device)
    theta = torch.full((g,), 2.0, device=device)
    prior_prec = 1.0 / batch_prior_sd**2
    history: list[float] = []
    it = 0
    bar = tqdm(total=n_iter, desc="NB prototypes (at most)", disable=not progress)
    for it in range(1, n_iter + 1):  # noqa: B007
        score, info, _ = _accumulate(chunks, rho, beta, theta, "rho", n_types, n_batches, device)
        delta = torch.clamp(score / info.clamp_min(1e-8), -3.0, 3.0).float()
        rho = rho + delta
        if use_batch:
            score, info, _ = _accumulate(chunks, rho, beta, theta, "beta", n_types, n_batches, device)
            beta = beta + torch.clamp((score - prior_prec * beta) / (info + prior_prec), -3.0, 3.0).float()
            shift = beta.mean(0, keepdim=True)
            beta, rho = beta - shift, rho + shift
        score, info, loglik = _accumulate(chunks, rho, beta, theta, "theta", n_types, n_batches, device)
        grad, hess = score[0], info[0]
        newton = torch.where(hess < 0, -grad / hess.clamp(max=-1e-8), torch.sign(grad) * 0.5)
        theta = torch.exp(
            torch.clamp(torch.log(theta) + torch.clamp(newton.float(), -1.0, 1.0), np.log(1e-2), np.log(1e4))
        )
        prior = 0.5 * prior_prec * float((beta.double() ** 2).sum())
        history.append((-loglik + prior) / n)
        bar.update()
        if len(history) > 1 and abs(history[-2] - history[-1]) <= tol * abs(history[-1]):
            break
    bar.total = bar.n  # converged: the bar ends where the fit did, not at an unreached cap
    bar.set_description("NB prototypes (converged)" if bar.n < n_iter else "NB prototypes")
    bar.close()
    return NBRegressionResult(
        rates=(torch.exp(rho).cpu().numpy() / lib_scale).astype(np.float64),
        batch_effects=torch.exp(beta).cpu().numpy(),
        theta=theta.cpu().numpy(),
        loss_history=history,
        n_iter=it,
    )
