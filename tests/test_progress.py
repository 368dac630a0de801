"""Progress off a terminal: a line per interval (fake clock), shared by training and augmentation."""

from __future__ import annotations

import io
from functools import partial

import pytest
from test_loop import accuracy_on, classification_loss, collate, make_classifier, token_data

from distill.data import augment
from distill.data.augment import Augmenter
from distill.progress import Progress
from distill.train import loop
from distill.train.loop import TrainConfig, train


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_line_per_interval_with_count_figures_rate_and_eta():
    clock, stream = FakeClock(), io.StringIO()
    progress = Progress("finetune", 100, initial=10, stream=stream, interval=30, clock=clock)
    clock.now += 10
    progress.update(10, loss=0.51234)
    assert stream.getvalue() == ""  # 10 s: still inside the interval
    clock.now += 20
    progress.set(best_dev_accuracy=0.8)
    progress.update(10, loss=0.4)
    assert stream.getvalue() == (
        "[finetune] 30/100 steps (30%), loss 0.4, best dev accuracy 0.8, 1.5 s/step, ETA 1m45s\n"
    )  # 20 steps in 30 s (the 10 resumed ones do not count), 70 left
    clock.now += 29
    progress.update(1)
    assert stream.getvalue().count("\n") == 1  # 29 s after the last line
    clock.now += 61
    progress.update(1)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert lines[1] == "[finetune] 32/100 steps (32%), loss 0.4, best dev accuracy 0.8, 5.45 s/step, ETA 6m11s"
    assert lines[2] == "[finetune] 32/100 steps (32%), loss 0.4, best dev accuracy 0.8, 5.45 s/step, done in 2m00s"


def test_a_short_step_or_a_disabled_one_writes_nothing():
    clock, stream = FakeClock(), io.StringIO()
    with Progress("augment", 5, unit="text", stream=stream, clock=clock) as progress:
        clock.now += 5
        progress.update(5)
    hidden = Progress("augment", 5, unit="text", stream=stream, interval=0, enabled=False, clock=clock)
    clock.now += 60
    hidden.update(5)
    hidden.close()
    assert stream.getvalue() == ""


def test_a_failed_step_does_not_claim_to_be_done():
    clock, stream = FakeClock(), io.StringIO()
    with pytest.raises(KeyboardInterrupt), Progress("finetune", 10, stream=stream, interval=0, clock=clock) as progress:
        clock.now += 1
        progress.update()
        raise KeyboardInterrupt
    assert stream.getvalue() == "[finetune] 1/10 steps (10%), 1 steps/s, ETA 9s\n"


def test_a_terminal_gets_a_bar_instead_of_lines():
    terminal = Terminal()
    with Progress("teacher labels", 4, unit="text", stream=terminal, interval=0) as progress:
        progress.update(4)
    assert progress.bar is not None and "4/4" in terminal.getvalue() and "ETA" not in terminal.getvalue()


def test_training_writes_progress_lines_with_loss_and_dev_metric(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(loop, "Progress", partial(Progress, interval=0))
    data = token_data()
    cfg = TrainConfig(max_steps=3, lr=0.05, batch_size=8, warmup_ratio=0.0, eval_every=1)
    train(make_classifier(), classification_loss, data, cfg, collate=collate, work_dir=tmp_path, eval_fn=accuracy_on(data), desc="unit")
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in lines] == ["[unit] 1/3 steps (33%)", "[unit] 2/3 steps (67%)", "[unit] 3/3 steps (100%)", "[unit] 3/3 steps (100%)"]
    assert "loss " in lines[0] and "best dev accuracy " in lines[1] and "done in " in lines[-1]


def test_augmentation_writes_progress_lines(monkeypatch, capsys):
    monkeypatch.setattr(augment, "Progress", partial(Progress, interval=0))
    monkeypatch.setattr(augment, "_PROGRESS_MIN_TEXTS", 1)
    Augmenter("en", pos_swap=0.0, multiplier=2).augment(["a good film", "bad plot"])
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in lines] == ["[augment] 1/2 texts (50%)", "[augment] 2/2 texts (100%)", "[augment] 2/2 texts (100%)"]
