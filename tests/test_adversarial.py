"""FGM and PGD on the word embeddings: step sizes, projection, exact restore, gradients."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.func import functional_call
from torch.optim.optimizer import register_optimizer_step_pre_hook
from transformers import BertConfig, BertModel

from distill.errors import UserError
from distill.train.adversarial import FGM, PGD, find_word_embeddings
from distill.train.loop import TrainConfig, train

TOKENS = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 1]])  # (batch, seq)
TARGETS = torch.tensor([0.5, -1.0])  # (batch,)
EMBEDDINGS = "word_embeddings.weight"


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


def grads_at(
    model: nn.Module,
    embedding_weight: torch.Tensor,
    tokens: torch.Tensor = TOKENS,
    targets: torch.Tensor = TARGETS,
) -> dict[str, torch.Tensor]:
    """Gradients of every parameter with the embedding matrix replaced (independent path)."""
    params = {name: p.detach().clone().requires_grad_() for name, p in model.named_parameters()}
    params[EMBEDDINGS] = embedding_weight.detach().clone().requires_grad_()
    loss = ((functional_call(model, params, (tokens,)) - targets) ** 2).mean()
    loss.backward()
    return {name: p.grad for name, p in params.items()}


def test_fgm_moves_embeddings_by_eps_along_unit_gradient_and_restores_exactly() -> None:
    model = make_model()
    weight = model.word_embeddings.weight
    original = weight.detach().clone()
    loss_of(model).backward()
    grad = weight.grad.clone()

    fgm = FGM(model, eps=0.7)
    assert fgm.attack(grad)
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

    assert not FGM(model, eps=1.0).attack(torch.full_like(weight, bad_grad))
    assert torch.equal(weight, original)


def accumulate_earlier_gradients(model: nn.Module) -> dict[str, torch.Tensor]:
    """Stand-in for an earlier micro-batch: gradients already accumulated in `.grad`."""
    earlier = {name: torch.randn_like(p) for name, p in model.named_parameters()}
    for name, param in model.named_parameters():
        param.grad = earlier[name].clone()
    return earlier


def test_fgm_adversarial_backward_follows_only_the_current_gradient_and_adds_both() -> None:
    model = make_model()
    weight = model.word_embeddings.weight
    original = weight.detach().clone()
    earlier = accumulate_earlier_gradients(model)
    clean = grads_at(model, original)
    perturbed = original + 0.5 * clean["word_embeddings.weight"] / clean["word_embeddings.weight"].norm()

    FGM(model, eps=0.5).adversarial_backward(
        loss_of(model), lambda: loss_of(model), lambda loss: loss.backward()
    )

    adversarial = grads_at(model, perturbed)
    for name, param in model.named_parameters():
        assert torch.allclose(param.grad, earlier[name] + clean[name] + adversarial[name], atol=1e-6), name
    assert torch.equal(weight, original)


def test_pgd_keeps_total_perturbation_inside_eps_ball() -> None:
    model = make_model()
    weight = model.word_embeddings.weight
    original = weight.detach().clone()
    pgd = PGD(model, eps=0.3, alpha=0.2, steps=25)

    for step in range(25):
        model.zero_grad()
        loss_of(model).backward()
        pgd.attack(weight.grad, first=step == 0)
        norm = torch.linalg.vector_norm(weight - original).item()
        assert norm <= 0.3 + 1e-6
    assert norm == pytest.approx(0.3, rel=1e-5)  # alpha·steps far exceeds eps: on the sphere

    pgd.restore()
    assert torch.equal(weight, original)


def project(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """`delta` scaled back onto the eps-ball when outside it."""
    norm = delta.norm()
    return delta if norm <= eps else delta * eps / norm


def test_pgd_keeps_earlier_and_clean_gradients_plus_only_the_last_step() -> None:
    eps, alpha = 0.25, 0.2
    model = make_model()
    weight = model.word_embeddings.weight
    original = weight.detach().clone()
    earlier = accumulate_earlier_gradients(model)
    clean = grads_at(model, original)

    PGD(model, eps=eps, alpha=alpha, steps=2).adversarial_backward(
        loss_of(model), lambda: loss_of(model), lambda loss: loss.backward()
    )

    # Independent replay: step 1 follows the clean gradient, step 2 the gradient at step 1.
    g0 = clean["word_embeddings.weight"]
    first = original + project(alpha * g0 / g0.norm(), eps)
    g1 = grads_at(model, first)["word_embeddings.weight"]
    second = original + project(first - original + alpha * g1 / g1.norm(), eps)
    final = grads_at(model, second)
    for name, param in model.named_parameters():
        assert torch.allclose(param.grad, earlier[name] + clean[name] + final[name], atol=1e-6), name
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


def test_frozen_word_embeddings_are_a_user_error() -> None:
    model = make_model()
    model.word_embeddings.requires_grad_(False)
    with pytest.raises(UserError, match="frozen"):
        PGD(model, eps=1.0, alpha=0.3, steps=3)


# --------------------------------------------------------------- inside the training loop

ACCUMULATION_TOKENS = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 1], [8, 9, 0, 2], [3, 3, 5, 7]])  # (n, seq)
ACCUMULATION_TARGETS = torch.tensor([0.5, -1.0, 2.0, 0.0])  # (n,)


def train_one_accumulated_step(
    work_dir: Path, **adversarial: Any
) -> tuple[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], dict[str, torch.Tensor]]:
    """One optimiser step over 2 micro-batches of 2 examples, through the training loop.

    Returns (tokens, targets, embedding matrix) as each loss call saw them, and the
    gradients the optimiser stepped with (no clipping).
    """
    model = make_model()
    calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    stepped: list[dict[str, torch.Tensor]] = []

    def loss_fn(trained: nn.Module, batch: list[torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """`trained` is `model`, or its DDP wrapper under torch.distributed."""
        tokens, targets = batch
        calls.append((tokens, targets, model.word_embeddings.weight.detach().clone()))
        return ((trained(tokens) - targets) ** 2).mean(), {}

    def record(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        stepped.append({name: p.grad.clone() for name, p in model.named_parameters()})

    cfg = TrainConfig(max_steps=1, batch_size=2, grad_accum=2, max_grad_norm=0, **adversarial)
    data = list(zip(ACCUMULATION_TOKENS, ACCUMULATION_TARGETS))
    collate_pairs = lambda items: [torch.stack(column) for column in zip(*items)]  # noqa: E731
    handle = register_optimizer_step_pre_hook(record)
    try:
        train(model, loss_fn, data, cfg, collate=collate_pairs, work_dir=work_dir)
    finally:
        handle.remove()
    return calls, stepped[0]


def assert_accumulated(
    stepped: dict[str, torch.Tensor], micro_batches: list[tuple[torch.Tensor, torch.Tensor]], attacked
) -> None:
    """`stepped` is the mean over micro-batches of the clean gradient plus the gradient at
    `attacked(tokens, targets)`, the embedding matrix of the (last) attack on that micro-batch."""
    model, original = make_model(), make_model().word_embeddings.weight.detach()
    for name, grad in stepped.items():
        expected = sum(
            grads_at(model, original, tokens, targets)[name]
            + grads_at(model, attacked(tokens, targets), tokens, targets)[name]
            for tokens, targets in micro_batches
        ) / len(micro_batches)
        assert torch.allclose(grad, expected, atol=1e-6), name


def test_fgm_under_gradient_accumulation_follows_each_micro_batchs_own_gradient(
    tmp_path: Path,
) -> None:
    eps = 0.5
    calls, stepped = train_one_accumulated_step(tmp_path, adversarial="fgm", adv_eps=eps)
    assert len(calls) == 4  # clean and adversarial loss of each micro-batch
    original = make_model().word_embeddings.weight.detach()

    def fgm_point(tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        own = grads_at(make_model(), original, tokens, targets)[EMBEDDINGS]
        return original + eps * own / own.norm()

    # The second micro-batch's attack: eps·g/‖g‖ with g its own gradient, not the first's added.
    (tokens_1, targets_1, _), _, (tokens_2, targets_2, clean), (_, _, attacked) = calls
    own = grads_at(make_model(), original, tokens_2, targets_2)[EMBEDDINGS]
    assert torch.equal(clean, original)
    assert torch.allclose(attacked - clean, eps * own / own.norm(), atol=1e-6)
    assert_accumulated(stepped, [(tokens_1, targets_1), (tokens_2, targets_2)], fgm_point)


def test_pgd_under_gradient_accumulation_follows_each_micro_batchs_own_gradient(
    tmp_path: Path,
) -> None:
    eps, alpha = 0.3, 0.2
    calls, stepped = train_one_accumulated_step(
        tmp_path, adversarial="pgd", adv_eps=eps, adv_alpha=alpha, adv_steps=2
    )
    assert len(calls) == 6  # clean loss and 2 attack steps of each micro-batch
    original = make_model().word_embeddings.weight.detach()

    def pgd_points(tokens: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g0 = grads_at(make_model(), original, tokens, targets)[EMBEDDINGS]
        first = original + project(alpha * g0 / g0.norm(), eps)
        g1 = grads_at(make_model(), first, tokens, targets)[EMBEDDINGS]
        return first, original + project(first - original + alpha * g1 / g1.norm(), eps)

    (tokens_1, targets_1, _), _, _, (tokens_2, targets_2, _), (_, _, first), (_, _, second) = calls
    expected_first, expected_second = pgd_points(tokens_2, targets_2)  # alpha < eps: first unprojected
    assert torch.allclose(first, expected_first, atol=1e-6)
    assert torch.allclose(second, expected_second, atol=1e-6)
    assert_accumulated(
        stepped,
        [(tokens_1, targets_1), (tokens_2, targets_2)],
        lambda tokens, targets: pgd_points(tokens, targets)[1],
    )


def _rank_of_two(rank: int, rendezvous: str, work_dir: str, adversarial: dict[str, Any]) -> None:
    """One of two gloo ranks taking `train_one_accumulated_step`; rank 0 saves what it saw."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=2)
    try:
        calls, stepped = train_one_accumulated_step(Path(work_dir) / f"rank{rank}", **adversarial)
    finally:
        dist.destroy_process_group()
    if rank == 0:
        torch.save(([weights for _, _, weights in calls], stepped), Path(work_dir) / "rank0.pt")


@pytest.mark.slow
@pytest.mark.parametrize(
    "adversarial",
    [{"adversarial": "fgm", "adv_eps": 0.5}, {"adversarial": "pgd", "adv_eps": 0.3, "adv_alpha": 0.2, "adv_steps": 2}],
    ids=["fgm", "pgd"],
)
def test_two_ranks_attack_and_accumulate_as_one_process(tmp_path: Path, adversarial: dict[str, Any]) -> None:
    """Each rank holds half of every micro-batch: the attack must follow the whole micro-batch's
    gradient (summed over the ranks), as one process with the same global batch does."""
    calls, stepped = train_one_accumulated_step(tmp_path / "one", **adversarial)
    mp.spawn(_rank_of_two, args=(f"file://{tmp_path / 'rendezvous'}", str(tmp_path), adversarial), nprocs=2)
    rank0_weights, rank0_stepped = torch.load(tmp_path / "rank0.pt", weights_only=True)

    for (_, _, weights), on_rank0 in zip(calls, rank0_weights, strict=True):
        assert torch.allclose(on_rank0, weights, atol=1e-6)
    for name, grad in stepped.items():
        assert torch.allclose(rank0_stepped[name], grad, atol=1e-6), name
