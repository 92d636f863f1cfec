"""Likelihoods and regularisers used by cpnn's models."""

from __future__ import annotations

import torch


def nb_log_prob(x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Negative-binomial log-likelihood of counts ``x`` with mean ``mu`` and inverse dispersion ``theta``.

    Same values as ``torch.distributions.NegativeBinomial(total_count=theta,
    logits=log(mu) - log(theta)).log_prob(x)``, written once in a numerically stable form.
    """
    log_theta_mu = torch.log(theta + mu + eps)
    return (
        theta * (torch.log(theta + eps) - log_theta_mu)
        + x * (torch.log(mu + eps) - log_theta_mu)
        + torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1.0)
    )


def gene_softmax_mse(log_p: torch.Tensor, log_p0: torch.Tensor) -> torch.Tensor:
    """MSE between the softmax over genes of learned and initial log-prototypes (K x G each)."""
    return torch.mean((torch.softmax(log_p, dim=-1) - torch.softmax(log_p0, dim=-1)) ** 2)
