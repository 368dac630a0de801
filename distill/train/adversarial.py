"""Adversarial training on the word embeddings (FGM, PGD).

Perturbing the embedding matrix along its gradient and training on the perturbed input as
well makes a fine-tuned classifier smoother around its training points; both methods put
the exact original weights back before the optimiser step.

The attack follows the gradient of the current micro-batch alone, read by a hook during its
backward pass: under gradient accumulation `weight.grad` also holds the earlier
micro-batches' gradients, which would point the attack elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.distributed as dist
from torch import nn

from distill.errors import UserError

LossClosure = Callable[[], torch.Tensor]
Backward = Callable[[torch.Tensor], None]


def find_word_embeddings(model: nn.Module, param_name: str = "word_embeddings") -> nn.Parameter:
    """The trainable word-embedding matrix: `get_input_embeddings()` when the model has it, else by name."""
    weight: nn.Parameter | None = None
    get_input_embeddings = getattr(model, "get_input_embeddings", None)
    if callable(get_input_embeddings):
        try:
            embeddings = get_input_embeddings()
        except NotImplementedError:
            embeddings = None
        if isinstance(getattr(embeddings, "weight", None), nn.Parameter):
            weight = embeddings.weight
    if weight is None:
        matches = [p for name, p in model.named_parameters() if param_name in name]
        if len(matches) != 1:
            raise UserError(
                f"found {len(matches)} parameters named like {param_name!r}, need exactly one",
                f"{type(model).__name__} (adversarial training)",
                "pass param_name matching only the word-embedding weight, or set adversarial = \"none\"",
            )
        weight = matches[0]
    if not weight.requires_grad:  # no gradient, so no attack direction
        raise UserError(
            "the word embeddings are frozen",
            f"{type(model).__name__} (adversarial training)",
            "train the word embeddings, or set adversarial = \"none\"",
        )
    return weight


def _own_gradient(weight: nn.Parameter, backward: Backward, loss: torch.Tensor) -> torch.Tensor:
    """Run `backward(loss)` and return the gradient this pass alone sends to `weight`.

    A hook sees it before autograd adds it to `weight.grad` (which, under gradient
    accumulation, also holds the earlier micro-batches'). Under torch.distributed it is
    summed over the ranks, whose shares make up the micro-batch: every rank then takes the
    same attack step, or all skip it, as the collectives of the next backward require.
    """
    captured: list[torch.Tensor] = []
    handle = weight.register_hook(captured.append)
    try:
        backward(loss)
    finally:
        handle.remove()
    # A copy: autograd may have made the captured tensor `weight.grad` itself.
    grad = captured[0].clone() if captured else torch.zeros_like(weight)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(grad)
    return grad


def _unit_step(grad: torch.Tensor) -> torch.Tensor | None:
    """g/‖g‖, or None when there is no usable direction (zero or non-finite norm)."""
    norm = torch.linalg.vector_norm(grad.float())
    if norm == 0 or not torch.isfinite(norm):
        return None
    return (grad.float() / norm).to(grad.dtype)


class FGM:
    """Fast Gradient Method: one step of size eps along the normalised embedding gradient."""

    def __init__(self, model: nn.Module, eps: float, param_name: str = "word_embeddings") -> None:
        if eps <= 0:
            raise UserError(f"adv_eps must be > 0, got {eps}", "adversarial", "use e.g. 1.0")
        self.eps = eps
        self.weight = find_word_embeddings(model, param_name)
        self._backup: torch.Tensor | None = None

    @torch.no_grad()
    def attack(self, grad: torch.Tensor) -> bool:
        """Add eps·g/‖g‖ to the embeddings; False (nothing changed) when `grad` is unusable."""
        direction = _unit_step(grad)
        if direction is None:
            return False
        self._backup = self.weight.detach().clone()
        self.weight.add_(direction, alpha=self.eps)
        return True

    @torch.no_grad()
    def restore(self) -> None:
        """Put back the exact pre-attack embeddings."""
        if self._backup is not None:
            self.weight.copy_(self._backup)
            self._backup = None

    def adversarial_backward(
        self, loss: torch.Tensor, loss_closure: LossClosure, backward: Backward
    ) -> float | None:
        """Backward of the clean `loss`; then attack, forward+backward on the perturbed model, restore.

        Returns the adversarial loss, or None when the attack was skipped.
        """
        if not self.attack(_own_gradient(self.weight, backward, loss)):
            return None
        try:
            loss = loss_closure()
            backward(loss)
        finally:
            self.restore()
        return loss.item()


class PGD:
    """Projected Gradient Descent: `steps` steps of size alpha, kept inside the eps-ball.

    Intermediate steps need gradients only to steer the attack, so the accumulated
    gradients of `grad_params` (default: the model's) are backed up after the clean
    backward and restored before the last step, whose gradient is added on top of them.
    """

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        alpha: float,
        steps: int,
        param_name: str = "word_embeddings",
        grad_params: Iterable[nn.Parameter] | None = None,
    ) -> None:
        if eps <= 0 or alpha <= 0 or steps < 1:
            raise UserError(
                f"PGD needs adv_eps > 0, adv_alpha > 0 and adv_steps >= 1 "
                f"(got {eps}, {alpha}, {steps})",
                "adversarial",
                "use e.g. adv_eps = 1.0, adv_alpha = 0.3, adv_steps = 3",
            )
        self.eps, self.alpha, self.steps = eps, alpha, steps
        self.weight = find_word_embeddings(model, param_name)
        params = model.parameters() if grad_params is None else grad_params
        self._grad_params = [p for p in params if p.requires_grad]
        self._backup: torch.Tensor | None = None
        self._grad_backup: list[torch.Tensor | None] = []

    @torch.no_grad()
    def attack(self, grad: torch.Tensor, first: bool) -> None:
        """One step of alpha·g/‖g‖, then project the total perturbation onto the eps-ball."""
        if first:
            self._backup = self.weight.detach().clone()
        if self._backup is None:
            raise RuntimeError("PGD.attack(first=False) called before a first attack")
        direction = _unit_step(grad)
        if direction is None:
            return
        self.weight.add_(direction, alpha=self.alpha)
        delta = self.weight - self._backup
        norm = torch.linalg.vector_norm(delta.float())
        if norm > self.eps:
            self.weight.copy_(self._backup + delta * (self.eps / norm))

    @torch.no_grad()
    def restore(self) -> None:
        """Put back the exact pre-attack embeddings."""
        if self._backup is not None:
            self.weight.copy_(self._backup)
            self._backup = None

    def backup_grad(self) -> None:
        self._grad_backup = [None if p.grad is None else p.grad.clone() for p in self._grad_params]

    def restore_grad(self) -> None:
        for param, grad in zip(self._grad_params, self._grad_backup, strict=True):
            param.grad = grad
        self._grad_backup = []

    def adversarial_backward(
        self, loss: torch.Tensor, loss_closure: LossClosure, backward: Backward
    ) -> float:
        """Backward of the clean `loss`, then K attack steps; only the last one's gradient is kept."""
        grad = _own_gradient(self.weight, backward, loss)
        self.backup_grad()
        try:
            for step in range(self.steps):
                self.attack(grad, first=step == 0)
                adversarial_loss = loss_closure()
                if step < self.steps - 1:
                    grad = _own_gradient(self.weight, backward, adversarial_loss)
                else:
                    self.restore_grad()
                    backward(adversarial_loss)
        finally:
            if self._grad_backup:  # interrupted before the last step: keep the clean gradients
                self.restore_grad()
            self.restore()
        return adversarial_loss.item()
