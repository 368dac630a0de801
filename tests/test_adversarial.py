"""FGM and PGD on the word embeddings: step sizes, projection, exact restore, gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call
from transformers import BertConfig, BertModel

from distill.errors import UserError
from distill.train.adversarial import FGM, PGD, find_word_embeddings

TOKENS = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 1]])  # (batch, seq)
TARGETS = torch.tensor([0.5, -1.0])  # (batch,)


class BagOfEmbeddings(nn.Module):
    """Mean of word embeddings into a linear scorer: small enough to check by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(10, 4)
        self.score = nn.Linear(4, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.score(self.word_embeddings(tokens).mean(dim=1)).squeeze(-1)  # (batch,)


def make_model() -> BagOfEmbeddings:
    torch.manual_seed(0)
    return BagOfEmbeddings()


def loss_of(model: nn.Module) -> torch.Tensor:
    return ((model(TOKENS) - TARGETS) ** 2).mean()


def grads_at(model: nn.Module, embedding_weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gradients of every parameter with the embedding matrix replaced (independent path)."""
    params = {name: p.detach().clone().requires_grad_() for name, p in model.named_parameters()}
    params["word_embeddings.weight"] = embedding_weight.detach().clone().requires_grad_()
    loss = ((functional_call(model, params, (TOKENS,)) - TARGETS) ** 2).mean()
    loss.backward()
    return {name: p.grad for name, p in params.items()}


def test_fgm_moves_embeddings_by_eps_along_unit_gradient_and_restores_exactly() -> None:
    model = make_model()
    weight = model.word_embeddings.weight
    original = weight.detach().clone()
    loss_of(model).backward()
    grad = weight.grad.clone()

    fgm = FGM(model, eps=0.7)
    assert fgm.attack()
    expected = original + 0.7 * grad / grad.norm()
    assert torch.allclose(weight, expected, atol=1e-7)
    assert torch.linalg.vector_norm(weight - original).item() == pytest.approx(0.7, rel=1e-5)

    fgm.restore()
    assert torch.equal(weight, original)


@pytest.mark.parametrize("bad_grad", [0.0, float("nan"), float("inf")])
def test_fgm_skips_zero_or_non_finite_gradients(bad_grad: float) -> None:
    model = make_model()
    weight = model.word_embeddings.weight
    original = weight.detach().clone()
    weight.grad = torch.full_like(weight, bad_grad)

    assert not FGM(model, eps=1.0).attack()
    assert torch.equal(weight, original)


def test_fgm_adversarial_backward_adds_gradient_at_perturbed_point() -> None:
    model = make_model()
    weight = model.word_embeddings.weight
    original = weight.detach().clone()
    loss_of(model).backward()
    clean = {name: p.grad.clone() for name, p in model.named_parameters()}
    perturbed = original + 0.5 * clean["word_embeddings.weight"] / clean["word_embeddings.weight"].norm()

    FGM(model, eps=0.5).adversarial_backward(lambda: loss_of(model), lambda loss: loss.backward())

    adversarial = grads_at(model, perturbed)
    for name, param in model.named_parameters():
        assert torch.allclose(param.grad, clean[name] + adversarial[name], atol=1e-6), name
    assert torch.equal(weight, original)


def test_pgd_keeps_total_perturbation_inside_eps_ball() -> None:
    model = make_model()
    weight = model.word_embeddings.weight
    original = weight.detach().clone()
    pgd = PGD(model, eps=0.3, alpha=0.2, steps=25)

    for step in range(25):
        model.zero_grad()
        loss_of(model).backward()
        pgd.attack(first=step == 0)
        norm = torch.linalg.vector_norm(weight - original).item()
        assert norm <= 0.3 + 1e-6
    assert norm == pytest.approx(0.3, rel=1e-5)  # alpha·steps far exceeds eps: on the sphere

    pgd.restore()
    assert torch.equal(weight, original)


def test_pgd_keeps_clean_gradients_plus_only_the_last_step() -> None:
    eps, alpha = 0.25, 0.2
    model = make_model()
    weight = model.word_embeddings.weight
    original = weight.detach().clone()
    loss_of(model).backward()
    clean = {name: p.grad.clone() for name, p in model.named_parameters()}

    PGD(model, eps=eps, alpha=alpha, steps=2).adversarial_backward(
        lambda: loss_of(model), lambda loss: loss.backward()
    )

    # Independent replay: step 1 follows the clean gradient, step 2 the gradient at step 1.
    def project(delta: torch.Tensor) -> torch.Tensor:
        norm = delta.norm()
        return delta if norm <= eps else delta * eps / norm

    g0 = clean["word_embeddings.weight"]
    first = original + project(alpha * g0 / g0.norm())
    g1 = grads_at(model, first)["word_embeddings.weight"]
    second = original + project(first - original + alpha * g1 / g1.norm())
    final = grads_at(model, second)
    for name, param in model.named_parameters():
        assert torch.allclose(param.grad, clean[name] + final[name], atol=1e-6), name
    assert torch.equal(weight, original)


def test_word_embeddings_found_through_get_input_embeddings() -> None:
    config = BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37
    )
    model = BertModel(config)
    assert find_word_embeddings(model) is model.embeddings.word_embeddings.weight


def test_missing_word_embeddings_is_a_user_error() -> None:
    with pytest.raises(UserError, match="word_embeddings"):
        FGM(nn.Linear(3, 3), eps=1.0)
