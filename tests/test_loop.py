"""The training loop: accumulation, early stopping, NaN guard, exact resume, helpers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.optim.optimizer import register_optimizer_step_pre_hook

from distill.errors import TrainingError, UserError
from distill.train.checkpoint import checkpoint_path
from distill.train.loop import TrainConfig, move_to_device, resolve_device, train

VOCAB, WIDTH, CLASSES = 100, 32, 3


def token_data(num_examples: int = 24) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (num_examples, 6), generator=generator)  # (n, seq)
    labels = tokens[:, 0] % CLASSES  # (n,)
    return [{"tokens": t, "label": y} for t, y in zip(tokens, labels)]


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}


class TokenClassifier(nn.Module):
    """Embeddings -> mean -> dropout -> linear: dropout makes the RNG part of the state."""

    def __init__(self) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(VOCAB, WIDTH)
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(WIDTH, CLASSES)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        pooled = self.word_embeddings(tokens).mean(dim=1)  # (batch, width)
        return self.head(self.dropout(pooled))  # (batch, classes)


def make_classifier() -> TokenClassifier:
    torch.manual_seed(0)
    return TokenClassifier()


def classification_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    loss = F.cross_entropy(model(batch["tokens"]), batch["label"])
    return loss, {"ce": loss.item()}


def accuracy_on(data: list[dict[str, torch.Tensor]]):
    batch = collate(data)

    def evaluate(model: nn.Module) -> dict[str, float]:
        model.eval()
        predictions = model(batch["tokens"]).argmax(dim=-1)
        return {"accuracy": (predictions == batch["label"]).float().mean().item()}

    return evaluate


class Interrupted(Exception):
    """Stands in for a process killed in the middle of training."""


def run_with_projection(
    work_dir: Path, cfg: TrainConfig, crash_at_call: int | None = None, crash: type = Interrupted
) -> tuple[TokenClassifier, nn.Module, Any]:
    """Train the classifier plus an auxiliary projection (an extra module) under every feature."""
    data = token_data()
    model = make_classifier()
    projection = nn.Linear(WIDTH, WIDTH)
    calls = 0

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        nonlocal calls
        calls += 1
        if calls == crash_at_call:
            raise crash()
        ce, logs = classification_loss(model, batch)
        embedded = model.word_embeddings(batch["tokens"]).mean(dim=1)  # (batch, width)
        auxiliary = projection(embedded).pow(2).mean()
        return ce + 0.1 * auxiliary, logs

    result = train(
        model,
        loss_fn,
        data,
        cfg,
        collate=collate,
        work_dir=work_dir,
        eval_fn=accuracy_on(data),
        extra_modules=[projection],
    )
    return model, projection, result


RESUME_CONFIG = dict(
    epochs=3, lr=0.05, batch_size=4, grad_accum=2, ema=0.8, adversarial="fgm", eval_every=2
)


def assert_same_parameters(left: nn.Module, right: nn.Module) -> None:
    for (name, a), b in zip(left.named_parameters(), right.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


def test_resume_after_a_crash_ends_with_the_uninterrupted_parameters(tmp_path: Path) -> None:
    cfg = TrainConfig(**RESUME_CONFIG, checkpoint_every=2)
    reference, reference_projection, reference_result = run_with_projection(tmp_path / "ref", cfg)

    # 3 steps of 2 micro-batches, each with a clean and an adversarial loss: 4 calls a step.
    # Call 22 is in step 6, after the checkpoint of step 4, in the middle of epoch 1.
    with pytest.raises(Interrupted):
        run_with_projection(tmp_path / "run", cfg, crash_at_call=22)
    saved = torch.load(checkpoint_path(tmp_path / "run") / "state.pt", weights_only=True)
    assert (saved["progress"]["global_step"], saved["progress"]["batches_done"]) == (4, 2)
    assert saved["average"]["num_updates"] == 4  # the EMA warm-up resumes at update 5
    model, projection, result = run_with_projection(tmp_path / "run", cfg)

    assert reference_result.global_steps == result.global_steps == 9
    assert result.best_step == reference_result.best_step
    assert result.best_metrics == reference_result.best_metrics
    assert_same_parameters(model, reference)
    assert_same_parameters(projection, reference_projection)


def test_keyboard_interrupt_mid_step_saves_the_step_start_and_resumes_exactly(
    tmp_path: Path,
) -> None:
    cfg = TrainConfig(**RESUME_CONFIG, checkpoint_every=1000)
    reference, _, _ = run_with_projection(tmp_path / "ref", cfg)

    # Call 7 is the clean loss of the second micro-batch of step 2.
    with pytest.raises(KeyboardInterrupt):
        run_with_projection(tmp_path / "run", cfg, crash_at_call=7, crash=KeyboardInterrupt)
    saved = torch.load(checkpoint_path(tmp_path / "run") / "state.pt", weights_only=True)
    assert saved["progress"]["global_step"] == 1
    assert saved["progress"]["batches_done"] == 2
    model, _, _ = run_with_projection(tmp_path / "run", cfg)

    assert_same_parameters(model, reference)


def test_gradient_accumulation_matches_one_larger_batch(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(3)
    inputs = torch.randn(32, 5, generator=generator)  # (n, features)
    targets = inputs @ torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0]) + 0.1  # (n,)
    data = list(zip(inputs, targets))

    def regression_loss(model: nn.Module, batch: list[torch.Tensor]) -> tuple[torch.Tensor, dict]:
        features, target = batch
        return F.mse_loss(model(features).squeeze(-1), target), {}

    def run(batch_size: int, grad_accum: int, name: str) -> nn.Linear:
        torch.manual_seed(0)
        model = nn.Linear(5, 1)
        cfg = TrainConfig(epochs=2, lr=0.05, batch_size=batch_size, grad_accum=grad_accum)
        collate_pairs = lambda items: [torch.stack(column) for column in zip(*items)]  # noqa: E731
        train(model, regression_loss, data, cfg, collate=collate_pairs, work_dir=tmp_path / name)
        return model

    accumulated = run(batch_size=4, grad_accum=2, name="accumulated")
    large_batch = run(batch_size=8, grad_accum=1, name="large")
    untouched = nn.Linear(5, 1)
    assert not torch.allclose(accumulated.weight, untouched.weight)  # it did train
    assert_same_parameters(accumulated, large_batch)


def first_step_gradients(
    tmp_path: Path, max_grad_norm: float
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Train a linear regression for one step on the whole data set as one batch.

    Returns the gradients computed independently and those the optimiser stepped with.
    """
    generator = torch.Generator().manual_seed(3)
    inputs = torch.randn(16, 5, generator=generator)  # (n, features)
    targets = inputs @ torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0]) + 0.1  # (n,)
    data = list(zip(inputs, targets))

    def regression_loss(model: nn.Module, batch: list[torch.Tensor]) -> tuple[torch.Tensor, dict]:
        features, target = batch
        return F.mse_loss(model(features).squeeze(-1), target), {}

    torch.manual_seed(0)
    model = nn.Linear(5, 1)
    untrained = nn.Linear(5, 1)
    untrained.load_state_dict(model.state_dict())
    regression_loss(untrained, [inputs, targets])[0].backward()
    stepped: list[list[torch.Tensor]] = []

    def record(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        stepped.append([p.grad.clone() for p in model.parameters()])

    cfg = TrainConfig(max_steps=1, lr=0.05, batch_size=len(data), max_grad_norm=max_grad_norm)
    collate_pairs = lambda items: [torch.stack(column) for column in zip(*items)]  # noqa: E731
    handle = register_optimizer_step_pre_hook(record)
    try:
        train(model, regression_loss, data, cfg, collate=collate_pairs, work_dir=tmp_path)
    finally:
        handle.remove()
    return [p.grad for p in untrained.parameters()], stepped[0]


def test_max_grad_norm_zero_leaves_the_gradients_unclipped(tmp_path: Path) -> None:
    independent, stepped = first_step_gradients(tmp_path, max_grad_norm=0)
    assert nn.utils.get_total_norm(independent) > 1  # the default clipping at 1 would show
    for grad, full in zip(stepped, independent, strict=True):
        assert torch.allclose(grad, full, atol=1e-6)


def test_positive_max_grad_norm_clips_the_total_norm_to_it(tmp_path: Path) -> None:
    independent, stepped = first_step_gradients(tmp_path, max_grad_norm=0.5)
    norm = nn.utils.get_total_norm(independent)
    assert norm > 0.5
    assert nn.utils.get_total_norm(stepped).item() == pytest.approx(0.5, rel=1e-5)
    for grad, full in zip(stepped, independent, strict=True):
        assert torch.allclose(grad, full * 0.5 / norm, atol=1e-6)


def test_early_stopping_stops_after_patience_evaluations_and_keeps_the_best(tmp_path: Path) -> None:
    scripted = iter([0.5, 0.6, 0.55, 0.58, 0.9, 0.95])
    weights_at_eval: list[torch.Tensor] = []
    logs: list[dict] = []

    def scripted_eval(model: nn.Module) -> dict[str, float]:
        weights_at_eval.append(model.head.weight.detach().clone())
        return {"accuracy": next(scripted), "loss": 0.0}

    model = make_classifier()
    cfg = TrainConfig(epochs=5, lr=0.05, batch_size=4, eval_every=1, early_stop_patience=2)
    result = train(
        model,
        classification_loss,
        token_data(),
        cfg,
        collate=collate,
        work_dir=tmp_path,
        eval_fn=scripted_eval,
        log=logs.append,
    )

    assert result.stopped_early
    assert result.global_steps == 4  # 0.55 and 0.58 are two evaluations without beating 0.6
    assert result.best_step == 2
    assert result.best_metrics == {"accuracy": 0.6, "loss": 0.0}
    assert torch.equal(model.head.weight, weights_at_eval[1])
    assert [record["eval_accuracy"] for record in logs if "eval_accuracy" in record] == [
        0.5,
        0.6,
        0.55,
        0.58,
    ]


def test_lower_is_better_metric_keeps_the_minimum(tmp_path: Path) -> None:
    scripted = iter([0.9, 0.4, 0.7])
    cfg = TrainConfig(max_steps=3, lr=0.05, batch_size=4, eval_every=1)
    result = train(
        make_classifier(),
        classification_loss,
        token_data(),
        cfg,
        collate=collate,
        work_dir=tmp_path,
        eval_fn=lambda model: {"loss": next(scripted)},
        metric="loss",
        greater_is_better=False,
    )
    assert (result.best_step, result.best_metrics) == (2, {"loss": 0.4})


def test_non_finite_loss_raises_training_error_naming_the_step(tmp_path: Path) -> None:
    calls = 0

    def diverging_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        nonlocal calls
        calls += 1
        loss, logs = classification_loss(model, batch)
        return (loss * float("nan") if calls == 3 else loss), logs

    cfg = TrainConfig(epochs=1, lr=0.05, batch_size=4, checkpoint_every=1)
    with pytest.raises(TrainingError, match=r"step 3.*resumable.*step 2.*lower the learning rate"):
        train(make_classifier(), diverging_loss, token_data(), cfg, collate=collate, work_dir=tmp_path)


def test_train_logs_loss_lr_and_loss_fn_values(tmp_path: Path) -> None:
    logs: list[dict] = []
    cfg = TrainConfig(max_steps=4, lr=0.05, batch_size=4, warmup_ratio=0.0, log_every=2)
    train(
        make_classifier(),
        classification_loss,
        token_data(),
        cfg,
        collate=collate,
        work_dir=tmp_path,
        log=logs.append,
        desc="unit",
    )
    assert [record["step"] for record in logs] == [2, 4, 4]  # two training records, then the time split
    assert {"seconds", "seconds_step", "seconds_data"} <= set(logs[-1]) and "loss" not in logs[-1]
    first = logs[0]
    assert first["stage"] == "unit"
    assert first["lr"] == pytest.approx(0.05 * (4 - 2) / 4)  # linear decay, no warm-up
    assert first["loss"] == pytest.approx(first["ce"])
    assert {"grad_norm", "epoch"} <= set(first)


def test_resume_with_changed_settings_is_a_user_error(tmp_path: Path) -> None:
    cfg = TrainConfig(max_steps=2, lr=0.05, batch_size=4)
    train(make_classifier(), classification_loss, token_data(), cfg, collate=collate, work_dir=tmp_path)
    changed = TrainConfig(max_steps=2, lr=0.01, batch_size=4)
    with pytest.raises(UserError, match=r"lr: 0.05 -> 0.01"):
        train(
            make_classifier(), classification_loss, token_data(), changed, collate=collate, work_dir=tmp_path
        )


def test_missing_metric_is_a_user_error(tmp_path: Path) -> None:
    cfg = TrainConfig(max_steps=1, lr=0.05, batch_size=4)
    with pytest.raises(UserError, match="'accuracy'.*'f1'"):
        train(
            make_classifier(),
            classification_loss,
            token_data(),
            cfg,
            collate=collate,
            work_dir=tmp_path,
            eval_fn=lambda model: {"f1": 1.0},
        )


@pytest.mark.parametrize(
    "settings, field_name",
    [({"grad_accum": 0}, "grad_accum"), ({"adversarial": "fgsm"}, "adversarial"), ({"schedule": "step"}, "schedule")],
)
def test_bad_settings_are_user_errors(settings: dict, field_name: str) -> None:
    with pytest.raises(UserError, match=field_name):
        TrainConfig(**settings)


def test_move_to_device_recurses_and_leaves_other_values() -> None:
    batch = {"ids": torch.ones(2), "nested": (torch.zeros(1), ["text", 3]), "name": "x"}
    moved = move_to_device(batch, torch.device("cpu"))
    assert moved["name"] == "x"
    assert moved["nested"][1] == ["text", 3]
    assert isinstance(moved["nested"], tuple)
    assert torch.equal(moved["ids"], batch["ids"])


def test_resolve_device() -> None:
    expected_auto = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected_auto
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(UserError, match="device"):
        resolve_device("tpu:0")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU"):
            resolve_device("cuda:0")


def _logit_dtypes(tmp_path: Path, precision: str) -> set[torch.dtype]:
    """The dtypes of the logits the loss saw in two training steps at `precision`."""
    seen: set[torch.dtype] = set()

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        logits = model(batch["tokens"])
        seen.add(logits.dtype)
        return F.cross_entropy(logits.float(), batch["label"]), {}

    cfg = TrainConfig(max_steps=2, batch_size=8, lr=1e-2, warmup_ratio=0.0, precision=precision)
    result = train(make_classifier(), loss_fn, token_data(), cfg, collate=collate, work_dir=tmp_path / precision, device="cpu")
    assert result.global_steps == 2
    return seen


def test_bf16_steps_autocast_the_linear_layers_where_the_cpu_supports_it(tmp_path, monkeypatch):
    import distill.train.loop as loop

    monkeypatch.setattr(loop, "cpu_supports_bf16", lambda: True)
    assert _logit_dtypes(tmp_path, "bf16") == {torch.bfloat16}
    assert _logit_dtypes(tmp_path, "fp32") == {torch.float32}
    assert _logit_dtypes(tmp_path, "auto") == {torch.float32}  # a CPU trains in fp32 unless asked


def test_bf16_falls_back_to_fp32_with_a_warning_where_unsupported(tmp_path, monkeypatch, caplog):
    import distill.train.loop as loop

    monkeypatch.setattr(loop, "cpu_supports_bf16", lambda: False)
    with caplog.at_level("WARNING", logger="distill"):
        assert _logit_dtypes(tmp_path, "bf16") == {torch.float32}
    assert "neither AVX-512 BF16 nor AMX: training in fp32" in caplog.text


def test_the_bf16_query_answers_without_raising():
    from distill.train.loop import cpu_supports_bf16

    assert isinstance(cpu_supports_bf16(), bool)


def test_the_result_splits_its_seconds_by_phase(tmp_path):
    import time as clock

    def slow_eval(model: nn.Module) -> dict[str, float]:
        clock.sleep(0.1)  # two evaluations: at least 0.2 s of eval
        return accuracy_on(token_data())(model)

    records: list[dict] = []
    cfg = TrainConfig(max_steps=4, batch_size=8, lr=1e-2, warmup_ratio=0.0, eval_every=2, log_every=1)
    result = train(
        make_classifier(), classification_loss, token_data(), cfg, collate=collate, work_dir=tmp_path,
        eval_fn=slow_eval, log=records.append, device="cpu",
    )
    phases = result.seconds_by_phase
    assert set(phases) == {"data", "step", "eval", "checkpoint", "log", "other"}
    assert sum(phases.values()) == pytest.approx(result.seconds)
    assert phases["eval"] >= 0.2 and all(value >= 0 for value in phases.values())
    assert records[-1]["seconds"] == pytest.approx(result.seconds)  # the last metrics record says it too
    assert result.timing()["seconds_by_phase"]["eval"] == round(phases["eval"], 2)
