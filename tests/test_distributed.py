"""torchrun: two gloo processes train the same teacher and TSD student as one process with the
same global batch (dropout off, so the only difference could be the sharding)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tiny_models import tiny_sentiment_rows, tiny_teacher_dir

REPO = Path(__file__).resolve().parent.parent


def write_recipe(tmp_path: Path, teacher: Path, data: Path, out: Path) -> Path:
    recipe = tmp_path / f"{out.name}.toml"
    recipe.write_text(
        f"""
[run]
name = "dist"
out_dir = "{out}"
device = "cpu"
threads = 1

[task]
dataset = "{data}"
max_length = 16

[teacher]
model = "{teacher}"

[stages.finetune]
max_steps = 6
batch_size = 8
lr = 1e-3
warmup_ratio = 0.0
layer_lr_decay = 0.9

[student]
layers = 1

[stages.task_specific]
max_steps = 4
batch_size = 8
lr = 1e-3
warmup_ratio = 0.0
temperature = 2.0

[export]
enabled = false

[report]
enabled = false
""",
        encoding="utf-8",
    )
    return recipe


def run(command: list[str], cwd: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path: Path) -> None:
    teacher = tiny_teacher_dir(tmp_path / "teacher", dropout=0.0)
    data = tmp_path / "data.csv"
    with open(data, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(tiny_sentiment_rows(80))

    single = write_recipe(tmp_path, teacher, data, tmp_path / "single")
    double = write_recipe(tmp_path, teacher, data, tmp_path / "double")
    run([sys.executable, "-m", "distill", "run", str(single)], tmp_path)
    run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "distill", "run", str(double)],
        tmp_path,
    )

    for model in ("teacher", "student"):
        one = load_file(tmp_path / "single" / "dist" / model / "model.safetensors")
        two = load_file(tmp_path / "double" / "dist" / model / "model.safetensors")
        assert one.keys() == two.keys()
        for name in one:
            torch.testing.assert_close(one[name], two[name], atol=1e-5, rtol=0, msg=f"{model}: {name}")
    start = load_file(teacher / "model.safetensors")
    tuned = load_file(tmp_path / "single" / "dist" / "teacher" / "model.safetensors")
    moved = [name for name in start if not torch.equal(start[name], tuned[f"bert.{name}"])]
    assert moved, "training changed nothing: the comparison would prove nothing"
    assert not list((tmp_path / "double" / "dist").glob(".ranks/*/*"))  # rank 1's scratch is cleared
