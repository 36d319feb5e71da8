"""One optimizer step, the same wherever a model is trained: ``lamina train`` and the analysis tools (recall,
compare, bench).

A :class:`Stepper` owns the optimizer and schedule of one model (:mod:`lamina.runtime`: AdamW with weight decay on
matrices, warmup then cosine decay). :meth:`Stepper.loss` runs the forward pass under the run's autocast with the
state carried in and out, and scores it in fp32; :meth:`Stepper.update` back-propagates, clips the gradient norm,
steps the optimizer and the schedule. Neither reads a value back to the host, so a GPU step never waits for it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lamina.runtime import autocast_for, make_optimizer, make_scheduler


class Stepper:
    """The optimizer, schedule and clipping of ``cfg`` (a TrainConfig) for ``model`` on ``device``.

    ``total`` is the length of the schedule in steps (default ``cfg.steps``); ``forward`` calls the model
    (default the model itself; ``lamina train`` passes its compiled form with ``train.compile``)."""

    def __init__(self, model: torch.nn.Module, cfg, device: torch.device, total: int | None = None, forward=None):
        self.model = model
        self.forward = forward or model
        self.device = device
        self.precision = cfg.precision
        self.grad_clip = cfg.grad_clip
        self.optimizer = make_optimizer(model, cfg, device)
        self.scheduler = make_scheduler(self.optimizer, cfg, total)

    def loss(self, x: torch.Tensor, y: torch.Tensor, state=None) -> tuple[torch.Tensor, object]:
        """Mean cross entropy (fp32, nats per target) of the model's predictions for ``x`` read from ``state``,
        and the state after ``x``. Targets labelled -100 (cross_entropy's ``ignore_index``, e.g. the non-query
        positions of MQAR) are not scored."""
        with autocast_for(self.device, self.precision):
            logits, state = self.forward(x, state)
        return F.cross_entropy(logits.float().flatten(0, 1), y.flatten()), state

    def update(self, loss: torch.Tensor) -> None:
        """Back-propagate ``loss``, clip the gradient norm, step the optimizer and the schedule."""
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

    @property
    def lr(self) -> float:
        """The learning rate of the next step."""
        return self.scheduler.get_last_lr()[0]

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict` (also accepts a checkpoint's whole trainer state)."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
