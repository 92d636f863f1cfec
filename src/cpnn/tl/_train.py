"""The optimisation loop shared by every head: AdamW, StepLR, gradient clipping, early stopping."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .._settings import settings


@dataclass
class TrainData:
    """Inputs (embeddings or patches), panel counts, library sizes, optional reference composition."""

    x: torch.Tensor
    counts: torch.Tensor
    library: torch.Tensor
    composition: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.x.shape[0]

    def batch(self, idx: torch.Tensor, device: str) -> tuple:
        comp = None if self.composition is None else self.composition[idx].to(device)
        return self.x[idx].to(device), self.counts[idx].to(device), self.library[idx].to(device), comp


@dataclass
class TrainResult:
    """Epoch of the best weights (loaded into the modules), and the per-epoch history."""

    best_epoch: int
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random flips and 90-degree rotations of image batches (N, C, H, W); embeddings pass through."""
    if x.dim() != 4:
        return x
    k = int(torch.randint(0, 4, (1,), generator=gen))
    x = torch.rot90(x, k, dims=(2, 3))
    if bool(torch.randint(0, 2, (1,), generator=gen)):
        x = torch.flip(x, dims=(3,))
    return x


def _forward(model: nn.Module, head: nn.Module, x: torch.Tensor, device: str):
    ctx = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.startswith("cuda")
        else torch.autocast("cpu", enabled=False)
    )
    with ctx:
        return head(model(x))


@torch.no_grad()
def evaluate_loss(model: nn.Module, head: nn.Module, data: TrainData, *, batch_size: int, device: str) -> float:
    """Mean loss over ``data`` without gradient."""
    model.eval()
    head.eval()
    total, n = 0.0, 0
    for i in range(0, len(data), batch_size):
        idx = torch.arange(i, min(i + batch_size, len(data)))
        x, y, lib, comp = data.batch(idx, device)
        out = _forward(model, head, x, device)
        total += float(head.loss(out, y, lib, comp)) * len(idx)
        n += len(idx)
    return total / max(n, 1)


def run_training(
    model: nn.Module,
    head: nn.Module,
    train_data: TrainData,
    val_data: TrainData | None,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float = 1e-2,
    patience: int = 30,
    grad_clip: float = 0.5,
    step_size: int = 50,
    gamma: float = 0.9,
    seed: int = 0,
    device: str = "cpu",
    desc: str = "training",
) -> TrainResult:
    """Train ``head(model(x))``; ``model`` is the encoder when fine-tuning, else ``nn.Identity``.

    Early stopping watches the validation loss (patience in epochs) and the best weights are
    returned; without validation data the last weights are returned.
    """
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in list(model.parameters()) + list(head.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=step_size, gamma=gamma)
    best, best_epoch, wait = np.inf, 0, 0
    best_state = None
    history: list[dict] = []
    stopped = False
    bar = tqdm(range(1, epochs + 1), desc=desc, disable=settings.verbosity < 2)
    for epoch in bar:
        model.train()
        head.train()
        perm = torch.randperm(len(train_data), generator=gen)
        total = 0.0
        for i in range(0, len(perm), batch_size):
            idx = perm[i : i + batch_size]
            x, y, lib, comp = train_data.batch(idx, device)
            x = augment(x, gen)
            out = _forward(model, head, x, device)
            loss = head.loss(out, y, lib, comp)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"The training loss became {float(loss)} at epoch {epoch}; lower lr= or check the inputs."
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
            opt.step()
            total += float(loss.detach()) * len(idx)
        sched.step()
        record = {"epoch": epoch, "train_loss": total / len(train_data)}
        if val_data is not None:
            val = evaluate_loss(model, head, val_data, batch_size=max(batch_size, 256), device=device)
            record["val_loss"] = val
            if val < best:
                best, best_epoch, wait = val, epoch, 0
                best_state = (copy.deepcopy(model.state_dict()), copy.deepcopy(head.state_dict()))
            else:
                wait += 1
        history.append(record)
        bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k != "epoch"})
        if val_data is not None and wait >= patience:
            stopped = True
            break
    if best_state is None:
        best_state, best_epoch = (model.state_dict(), head.state_dict()), history[-1]["epoch"]
    model.load_state_dict(best_state[0])
    head.load_state_dict(best_state[1])
    return TrainResult(best_epoch=best_epoch, history=history, stopped_early=stopped)
