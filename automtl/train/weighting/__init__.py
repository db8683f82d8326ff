"""Loss weightings: how the per-task losses of a step become the gradients that are optimised.

Every method is an ``nn.Module`` behind one interface and one name-based registry
(:func:`get_weighting`, ``WEIGHTINGS``, :func:`register_weighting` for a user's own):

* ``backward(losses, shared, scaler=None, reduce=None, step=None) -> Tensor``: backpropagate the
  step. Gradients *accumulate* into ``.grad`` of every parameter (as ``Tensor.backward`` does; zero
  them before), and the combined loss comes back detached and unscaled, for logging. Loss-level
  methods do ``combine(losses).backward()``; gradient-level ones (:class:`GradientWeighting`,
  e.g. PCGrad) backpropagate each task alone, give the ``shared`` parameters the combination of
  the per-task gradients and every other parameter the ordinary gradient of the plain sum;
* ``combine(losses, step=None, epoch=None) -> Tensor``: the weighted total as one differentiable
  scalar (gradient-level methods: the plain sum). A task whose loss is ``None`` or absent had no
  label in the batch and adds nothing. Callers that backpropagate the total themselves (or add
  regularisers to it) keep using it; they then get no gradient surgery;
* ``after_step(losses, before=None)``: once after every optimiser step (FAMO, ABDP adapt here);
  ``needs_post_step_losses`` says whether ``losses`` must be the batch's losses re-evaluated
  after the step (FAMO) rather than the step's own;
* ``epoch_end(avg_losses=None)``: once per epoch (DWA); ``weights()``: the current weights, for
  logging; ``parameters()``: learnable weighting parameters (uncertainty's log-variances);
  ``state_dict()``: everything a checkpoint needs to resume exactly.

The calling contract of one training step (the loop owns AMP and data-parallel averaging)::

    opt.zero_grad(set_to_none=True)
    with autocast:                                   # the forward only
        losses = {task: loss or None}                # this process's batch
    total = weighting.backward(losses, shared, scaler=scaler, reduce=reduce)
    average_gradients(params)                        # data parallel: all params, the weighting's too
    scaler.unscale_(opt); clip; scaler.step(opt); scaler.update()   # or opt.step()
    post = losses of the same batch under no_grad if weighting.needs_post_step_losses else losses
    weighting.after_step(mean over processes of post, before=mean over processes of losses)
    ...
    weighting.epoch_end(mean over processes of the epoch's losses)   # at each epoch end

* ``shared``: the parameters every task's loss flows through (the backbone or supermodel weights,
  not the task heads or the weighting's own parameters); the loss-level methods ignore it.
* AMP: pass the ``GradScaler`` and do *not* scale the losses; the weighting scales what it
  backpropagates, so every ``.grad`` holds scaled gradients for ``scaler.unscale_``. PCGrad's
  projection is invariant to the common scale; an overflow gives inf/NaN gradients that the
  scaler detects and skips. ``losses`` and the returned total are unscaled.
* Data parallel: gradients are averaged over the processes *after* ``backward``. For loss-level
  methods whose weights are equal in every process this is the gradient of the whole batch, so
  feed ``after_step``/``epoch_end`` process-averaged values to keep their state identical (DWA
  records local means by itself when ``epoch_end`` gets no argument). Methods whose combination
  is non-linear in the losses or gradients take ``reduce`` (a process average, identity in one
  process) to stay exact: PCGrad averages the per-task gradient matrix before projecting (the
  shared gradients then agree in every process and averaging them again leaves them as they are,
  up to rounding), FAMO averages the loss values its factors use. Without ``reduce``, PCGrad
  projects each process's gradients and the average of those is not PCGrad of the whole batch.
"""

from __future__ import annotations

from .adaptive import ABDP, FAMO
from .base import (
    WEIGHTINGS,
    GradientWeighting,
    Reduce,
    Scaler,
    Weighting,
    check_weighting_options,
    get_weighting,
    register_weighting,
    task_gradients,
    weighting_options,
)
from .gradient import PCGrad
from .loss import DWA, Equal, Static, Uncertainty

__all__ = [
    "ABDP",
    "DWA",
    "Equal",
    "FAMO",
    "GradientWeighting",
    "PCGrad",
    "Reduce",
    "Scaler",
    "Static",
    "Uncertainty",
    "WEIGHTINGS",
    "Weighting",
    "check_weighting_options",
    "get_weighting",
    "register_weighting",
    "task_gradients",
    "weighting_options",
]
