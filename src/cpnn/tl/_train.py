"""The optimisation loop shared by every head: AdamW, StepLR, gradient clipping, early stopping."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .._core import (
    Options,
    autocast,
    columnwise_spearman,
    dist,
    lognorm,
    nanmean,
    near_constant,
    option,
    remove_stale_temporaries,
    save_atomic,
)
from .._errors import CpnnError
from .._settings import settings
from ..data import Batch, PermutationSampler, RankBatchSampler, batch_loader
from ..models.heads import sum_parts


@dataclass(frozen=True)
class TrainOptions(Options):
    """How the head (and a fine-tuned encoder) is trained: :func:`run_training` takes the record whole.

    ``fit(train_kwargs=)``; the defaults are ``preset="cpnn"``'s (``"paper"``: 8 a step, lr 1e-3, float32).
    """

    epochs: int = option(1000, "Most epochs to train (training usually stops earlier, by ``patience``).")
    batch_size: int = option(256, "Rows a step (spots, or slides at slide level; the paper: 8).")
    lr: float = option(
        3e-3,
        "Learning rate of AdamW (StepLR(50, 0.9) per epoch, gradient clipping at 0.5; the paper: 1e-3).",
        low=0.0,
        strict=True,
    )
    weight_decay: float = option(1e-2, "Weight decay of AdamW.", low=0.0)
    patience: int = option(
        30, "Epochs without a better validation criterion (the head's data term) before training stops."
    )
    precision: Literal["bf16", "fp32"] = option(
        "bf16", "``'bf16'``: bf16 autocast on CUDA (no effect on the CPU); ``'fp32'``: float32, as the authors' code."
    )


@dataclass
class TrainResult:
    """Epoch of the best weights (loaded into the modules), and the per-epoch history."""

    best_epoch: int
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False
    #: why training ended before ``epochs``: "", "early stopping" or "interrupted"
    stop_reason: str = ""
    resumed_from: int = 0


def training_warnings(result: TrainResult, *, epochs: int, validated: bool, patience: int = 1) -> list[str]:
    """What a finished run says about its own budget: still improving at the cap, or best within the first few epochs.

    A run that ran all ``epochs`` and whose best validation epoch lies within the last ``patience``
    epochs had not converged: early stopping would not yet have fired. Each message names the
    fix; an empty list when training ended normally (or had no validation).
    """
    if not validated or not result.history or result.stop_reason == "interrupted":
        return []
    ran = len(result.history)
    last = result.history[-1]["epoch"]
    out = []
    if result.stop_reason == "" and ran + result.resumed_from >= epochs and result.best_epoch > last - max(patience, 1):
        out.append(
            f"the validation loss was still improving near the last epoch (best epoch {result.best_epoch} of {epochs}, "
            f"within the last {max(patience, 1)}, the patience): training stopped at its cap, not at a minimum. "
            "Raise train_kwargs={'epochs': ...} (or 'lr') and fit again."
        )
    if ran >= 10 and result.best_epoch <= 3:
        out.append(
            f"the validation loss was lowest at epoch {result.best_epoch} of {ran}: the model barely trained before "
            "it got worse on the validation spots. Lower train_kwargs={'lr': ...}, check that the validation spots "
            "resemble the training ones, and look at the composition (cp.pl.proportions) before trusting it."
        )
    return out


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite; the modules hold the last good weights."""


CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_VERSION = 1
#: Gradient-norm clip of every optimiser step.
GRAD_CLIP = 0.5
#: The learning rate is multiplied by LR_STEP_FACTOR every LR_STEP_EPOCHS epochs.
LR_STEP_EPOCHS, LR_STEP_FACTOR = 50, 0.9


def _save_checkpoint(path: Path, state: dict) -> None:
    """Write a training checkpoint atomically (tests replace this to simulate a kill after it)."""
    save_atomic(state, path)


def _load_checkpoint(path: Path, fingerprint: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file gets the same advice
        raise CpnnError(f"The checkpoint {path} cannot be read ({err}); delete it or pass resume=False.") from err
    if state.get("version") != CHECKPOINT_VERSION or state.get("fingerprint") != fingerprint:
        raise CpnnError(
            f"The checkpoint in {path.parent} belongs to a different training run (other data, spots or "
            "settings); use another checkpoint_dir, or resume=False to start over (it will be overwritten)."
        )
    return state


def adamw(params: list[nn.Parameter], *, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with its fused kernel (one call updates every parameter), else its multi-tensor one.

    torch's default on the CPU updates one parameter tensor at a time; at the faithful recipe's
    8 spots a step that update was a third of the step (the fused one: 1.5x the epochs a second, ``benchmarks/small_steps.py``;
    the same history to float rounding, docs/performance.md).
    """
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, foreach=True)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random flips and 90-degree rotations of image batches (N, C, H, W); embeddings pass through."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        return x
    k = int(torch.randint(0, 4, (1,), generator=gen))
    x = torch.rot90(x, k, dims=(2, 3))
    if bool(torch.randint(0, 2, (1,), generator=gen)):
        x = torch.flip(x, dims=(3,))
    return x


def _loss(
    model: nn.Module, head: nn.Module, batch: Batch, device: str, loss_head: nn.Module | None = None, mixed: bool = True
) -> dict[str, torch.Tensor]:
    """The batch's loss in its named parts (:meth:`Head.loss_terms`).

    ``model``/``head`` may be DDP wrappers (the forward syncs gradients), ``loss_head`` the raw head.
    """
    with autocast(device, enabled=mixed):
        out = head(model(batch.x))
    return (loss_head or head).loss_terms(out, batch.counts, batch.library, batch.composition, batch.sample)


@torch.no_grad()
def evaluate_loss(
    model: nn.Module, head: nn.Module, data: Any, *, batch_size: int, device: str, mixed: bool = True
) -> tuple[float, float]:
    """Mean validation criterion over ``data`` without gradient (:meth:`Head.criterion`), and the mean per-gene Spearman."""
    model.eval()
    head.eval()
    total, n = 0.0, 0
    predicted, measured = [], []
    for batch in batch_loader(data, batch_size=batch_size):
        batch = batch.to(device)
        with autocast(device, enabled=mixed):
            out = head(model(batch.x))
        loss = head.criterion(out, batch.counts, batch.library)
        total += float(loss) * len(batch)
        n += len(batch)
        predicted.append(out["proportions"].float().cpu().numpy())
        measured.append(batch.counts.float().cpu().numpy())
    total, n = dist.sum_all([total, n])
    if dist.world() > 1:
        parts = dist.gather((predicted, measured))
        predicted = [p for pr, _ in parts for p in pr]
        measured = [m for _, ms in parts for m in ms]
    pred, truth = np.concatenate(predicted), np.concatenate(measured)
    rho = columnwise_spearman(lognorm(pred.astype(np.float64)), lognorm(truth.astype(np.float64)))
    flat = near_constant(pred) | near_constant(truth)
    return total / max(n, 1), nanmean(np.where(flat, np.nan, rho))


def _snapshot(model: nn.Module, head: nn.Module) -> tuple[dict, dict]:
    """Independent copies of both modules' weights."""
    return copy.deepcopy(model.state_dict()), copy.deepcopy(head.state_dict())


def run_training(
    model: nn.Module,
    head: nn.Module,
    train_data: Any,
    val_data: Any | None,
    options: TrainOptions,
    *,
    seed: int = 0,
    device: str = "cpu",
    desc: str = "training",
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    fingerprint: str = "",
) -> TrainResult:
    """Train ``head(model(x))``; ``model`` is the encoder when fine-tuning, else ``nn.Identity``.

    ``train_data`` and ``val_data`` are datasets indexed by lists of positions (:mod:`cpnn.data`);
    each epoch a :class:`~cpnn.data.PermutationSampler` orders the training rows and a DataLoader
    fetches one batch per step.

    Early stopping watches the validation loss (patience in epochs) and the best weights are
    returned; without validation data the last weights are returned. With ``checkpoint_dir`` the
    whole state (weights, optimiser, scheduler, random generators, best weights, history) is
    written atomically after every epoch, and ``resume=True`` continues from it to the same
    result as an uninterrupted run. Ctrl-C stops after the current batch and keeps the best
    weights so far; a non-finite loss raises :class:`TrainingDiverged` with the last good
    weights loaded. ``options.precision``: ``"bf16"`` autocasts on CUDA (``preset="cpnn"``); ``"fp32"`` trains
    in float32 as the authors' code does (``preset="paper"``).
    """
    epochs, batch_size, patience = options.epochs, options.batch_size, options.patience
    mixed_precision = options.precision == "bf16"
    gen = torch.Generator().manual_seed(seed)
    train_data.generator = gen  # random tile draws of slide bags come from the loop's stream
    sampler = PermutationSampler(len(train_data), gen)
    world, main = dist.world(), dist.is_main()
    batches = RankBatchSampler(sampler, batch_size, dist.rank(), world) if world > 1 else None
    params = [p for p in list(model.parameters()) + list(head.parameters()) if p.requires_grad]
    step = _Step(
        *_distributed(model, head, device, world),
        head,
        params,
        device,
        world,
        batch_size,
        len(train_data),
        mixed_precision,
    )
    opt = adamw(params, lr=options.lr, weight_decay=options.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=LR_STEP_EPOCHS, gamma=LR_STEP_FACTOR)
    run = _Progress()
    ckpt = checkpoint_dir / CHECKPOINT_NAME if checkpoint_dir is not None else None
    if ckpt is not None and main:
        remove_stale_temporaries(ckpt)  # an interrupted write of an earlier run
    if resume and ckpt is not None and ckpt.exists():
        run = _Progress.restore(_load_checkpoint(ckpt, fingerprint), model, head, opt, sched, gen, epochs=epochs)
    bar = tqdm(range(run.start_epoch, epochs + 1), desc=desc, disable=not settings.progress_bar or not main)
    last_good = _snapshot(model, head)
    try:
        for epoch in bar:
            model.train()
            head.train()
            loader = batch_loader(train_data, batch_size=batch_size, sampler=sampler, batch_sampler=batches)
            seen, total, parts = step.epoch(loader, opt, gen, epoch, last_good)
            sched.step()
            seen, total, *sums = dist.sum_all([seen, total, *parts.values()])
            # one copy per epoch serves as the last good weights and, when better, as the best ones
            # (the copies are never modified, so sharing them is safe)
            last_good = _snapshot(model, head)
            record = {"epoch": epoch, "train_loss": total / max(seen, 1)}
            if len(parts) > 1:  # the loss's parts, so that the history can say which one moved
                record.update({f"train_{name}": v / max(seen, 1) for name, v in zip(parts, sums, strict=True)})
            if val_data is not None:
                eval_batch = val_data.eval_batch_size or max(batch_size, 256)
                record["val_loss"], record["val_spearman"] = evaluate_loss(
                    model, head, val_data, batch_size=eval_batch, device=device, mixed=mixed_precision
                )
                run.observe(record["val_loss"], epoch, last_good)
            run.history.append(record)
            bar.set_postfix(
                {k: f"{v:.4g}" for k, v in record.items() if k in ("train_loss", "val_loss", "val_spearman")}
            )
            if val_data is not None and run.wait >= patience:
                run.stop_reason = "early stopping"
            if ckpt is not None and main:
                state = run.checkpoint(model, head, opt, sched, gen, epoch=epoch, fingerprint=fingerprint)
                _save_checkpoint(ckpt, state)
            dist.barrier()  # the checkpoint is written before any process goes on
            if run.stop_reason:
                break
    except KeyboardInterrupt:
        run.stop_reason = "interrupted"
        model.load_state_dict(last_good[0])
        head.load_state_dict(last_good[1])
        if not run.history:
            raise
    finally:
        if run.stop_reason == "early stopping":  # the bar ends where training did, not at the unreached cap
            bar.n = bar.total = len(run.history) - run.resumed_from
            bar.set_description(f"{desc} (early stopping)")
        bar.close()
    best_state, best_epoch = run.best_state, run.best_epoch
    if best_state is None:
        best_state, best_epoch = (model.state_dict(), head.state_dict()), run.history[-1]["epoch"]
    model.load_state_dict(best_state[0])
    head.load_state_dict(best_state[1])
    return TrainResult(
        best_epoch=best_epoch,
        history=run.history,
        stopped_early=run.stop_reason == "early stopping",
        stop_reason=run.stop_reason,
        resumed_from=run.resumed_from,
    )


def _distributed(model: nn.Module, head: nn.Module, device: str, world: int) -> tuple[nn.Module, nn.Module]:
    """The modules each forward goes through: DDP wrappers under several processes (gradients averaged)."""
    if world <= 1:
        return model, head
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [torch.device(device).index] if str(device).startswith("cuda") else None
    # some parameters sit out a loss (the NB dispersion under the squared error): let DDP find them
    fwd_head = DDP(head, device_ids=ids, find_unused_parameters=True)
    fwd_model = model
    if any(p.requires_grad for p in model.parameters()):
        fwd_model = DDP(model, device_ids=ids, find_unused_parameters=True)
    return fwd_model, fwd_head


@dataclass
class _Step:
    """One optimiser step per batch: the forward through the (wrapped) modules, the loss, the update."""

    model: nn.Module
    head: nn.Module
    loss_head: nn.Module
    params: list[nn.Parameter]
    device: str
    world: int
    batch_size: int
    n_rows: int
    mixed: bool = True  # bf16 autocast on CUDA

    def epoch(
        self, loader: Any, opt: torch.optim.Optimizer, gen: torch.Generator, epoch: int, last_good: tuple[dict, dict]
    ) -> tuple[float, float, dict[str, float]]:
        """Every batch of ``loader``: this process's rows, and its sums of the loss and of each part over them."""
        seen, total = 0.0, 0.0
        parts = dict.fromkeys(self.loss_head.loss_parts, 0.0)
        for i, batch in enumerate(loader):
            batch = batch.to(self.device)
            batch.x = augment(batch.x, gen)
            terms = _loss(self.model, self.head, batch, self.device, self.loss_head, self.mixed) if len(batch) else None
            local = sum_parts(terms, self.loss_head.loss_parts) if terms is not None else None
            loss = local
            if self.world > 1:  # weight each process's mean by its share of the global batch
                n_global = min(self.batch_size, self.n_rows - i * self.batch_size)
                loss = (
                    local * (len(batch) * self.world / n_global)
                    if local is not None
                    else sum(p.sum() * 0.0 for p in self.params)  # no rows here: still take part in the sync
                )
            finite = torch.isfinite(loss).all() if local is not None else True
            if self.world > 1:
                finite = dist.sum_all([0.0 if finite else 1.0])[0] == 0
            if not finite:
                self.loss_head.load_state_dict(last_good[1])
                _unwrap(self.model).load_state_dict(last_good[0])
                raise TrainingDiverged(
                    f"The training loss became {float(loss.detach())} at epoch {epoch}; the model keeps the weights "
                    f"of epoch {epoch - 1}. Lower train_kwargs={{'lr': ...}} or check the inputs for extreme values."
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, GRAD_CLIP)
            opt.step()
            if local is not None:
                total += float(local.detach()) * len(batch)
                for name, value in terms.items():
                    parts[name] += float(value.detach()) * len(batch)
            seen += len(batch)
        return seen, total, parts


def _unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or the module itself)."""
    return getattr(module, "module", module)


@dataclass
class _Progress:
    """Where a run stands: best validation loss and its weights, patience used, history, why it stopped."""

    best: float = np.inf
    best_epoch: int = 0
    wait: int = 0
    best_state: tuple[dict, dict] | None = None
    history: list[dict] = field(default_factory=list)
    stop_reason: str = ""
    start_epoch: int = 1
    resumed_from: int = 0

    def observe(self, val: float, epoch: int, weights: tuple[dict, dict]) -> None:
        """Keep ``weights`` when ``val`` is the best validation loss so far, else use one epoch of patience."""
        if val < self.best:
            self.best, self.best_epoch, self.wait, self.best_state = val, epoch, 0, weights
        else:
            self.wait += 1

    def checkpoint(self, model, head, opt, sched, gen, *, epoch: int, fingerprint: str) -> dict:
        """The whole state after ``epoch``, as :meth:`restore` reads it."""
        return {
            "version": CHECKPOINT_VERSION,
            "fingerprint": fingerprint,
            "epoch": epoch,
            "model": model.state_dict(),
            "head": head.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "generator": gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "best": float(self.best),
            "best_epoch": int(self.best_epoch),
            "wait": int(self.wait),
            "best_model": self.best_state[0] if self.best_state else {},
            "best_head": self.best_state[1] if self.best_state else {},
            "history": self.history,
            "stop_reason": self.stop_reason,
        }

    @classmethod
    def restore(cls, state: dict, model, head, opt, sched, gen, *, epochs: int) -> _Progress:
        """Load a :meth:`checkpoint` into the modules, optimiser, scheduler and generators; the run's progress."""
        model.load_state_dict(state["model"])
        head.load_state_dict(state["head"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        done = int(state["epoch"])
        return cls(
            best=float(state["best"]),
            best_epoch=int(state["best_epoch"]),
            wait=int(state["wait"]),
            best_state=(state["best_model"], state["best_head"]) if state["best_head"] else None,
            history=[dict(r) for r in state["history"]],
            stop_reason=str(state["stop_reason"]),
            start_epoch=epochs + 1 if state["stop_reason"] else done + 1,  # a finished run has nothing left
            resumed_from=done,
        )


def fit_closed_form(head: nn.Module, train_data: Any, val_data: Any | None) -> TrainResult:
    """Fit a closed-form head (``head.closed_form``) on the datasets' features in one step."""
    inner = getattr(head, "head", head)  # the per-tile head of a slide-level wrapper
    train = train_data.closed_form_data()
    val = None if val_data is None else val_data.closed_form_data()
    return TrainResult(best_epoch=1, history=inner.fit_closed_form(train, val))
