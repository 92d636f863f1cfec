"""Likelihoods and regularisers used by cpnn's models."""

from __future__ import annotations

import torch


def nb_zero_count_terms(theta: torch.Tensor, log_theta: torch.Tensor, log_theta_mu: torch.Tensor) -> torch.Tensor:
    """The negative-binomial log-likelihood of a zero count: ``theta * (log theta - log(theta + mu))``.

    With :func:`nb_count_terms`, the one writing of the NB log-likelihood that every NB fit in cpnn
    uses (the head's loss, the prototype regression, the deconvolution): a sparse caller evaluates
    this part on every entry and :func:`nb_count_terms` on the non-zero counts only.
    """
    return theta * (log_theta - log_theta_mu)


def nb_count_terms(
    x: torch.Tensor, log_mu: torch.Tensor, log_theta_mu: torch.Tensor, theta: torch.Tensor
) -> torch.Tensor:
    """What a count ``x`` adds to :func:`nb_zero_count_terms` (0 when ``x`` is 0), without ``-lgamma(x + 1)``.

    ``x * (log mu - log(theta + mu)) + lgamma(x + theta) - lgamma(theta)``.
    """
    return x * (log_mu - log_theta_mu) + torch.lgamma(x + theta) - torch.lgamma(theta)


def nb_log_prob(x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Negative-binomial log-likelihood of counts ``x`` with mean ``mu`` and inverse dispersion ``theta``.

    Same values as ``torch.distributions.NegativeBinomial(total_count=theta,
    logits=log(mu) - log(theta)).log_prob(x)``, in a numerically stable form (:func:`nb_zero_count_terms`
    plus :func:`nb_count_terms`, dense).
    """
    log_theta_mu = torch.log(theta + mu + eps)
    return (
        nb_zero_count_terms(theta, torch.log(theta + eps), log_theta_mu)
        + nb_count_terms(x, torch.log(mu + eps), log_theta_mu, theta)
        - torch.lgamma(x + 1.0)
    )


def gene_softmax_mse(log_p: torch.Tensor, log_p0: torch.Tensor) -> torch.Tensor:
    """MSE between the softmax over genes of learned and initial log-prototypes (K x G each)."""
    return torch.mean((torch.softmax(log_p, dim=-1) - torch.softmax(log_p0, dim=-1)) ** 2)
