"""Kill-and-resume: a run killed in the middle of a training stage ends exactly like one that was not.

Every run is the real command line (`python -m distill run`) in a subprocess, on a tiny BERT teacher
(vocabulary ~100, hidden 32, 2 layers) and a 200-row CSV. To kill at a known point instead of racing
the clock, a `sitecustomize` module (on PYTHONPATH only for the runs that are to be killed) wraps the
loss function the finetune stage hands to `distill.train.loop.train`: at its N-th call it writes a
marker file and waits. The test then sees the marker, checks that a step checkpoint older than the
current step exists, and kills the process group. The reruns have no hook at all.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertModel, BertTokenizerFast

REPO = Path(__file__).resolve().parent.parent
WAIT_S = 300  # for a run to reach its pause point or finish (slow shared CI machines)
INTERRUPTED = "interrupted; run the same command again to resume"

LABEL_WORDS = {
    "negative": "bad awful boring terrible poor sad dull weak".split(),
    "neutral": "okay average plain fine usual normal common middle".split(),
    "positive": "good great fun lovely nice happy bright strong".split(),
}
FILLER = (
    "the a movie film plot acting story music cast scene was is it this that and but very "
    "really quite so i we they liked saw watched found felt think today yesterday"
).split()

# 200 rows -> 158 train rows -> 20 steps of 8 per epoch, 80 in all: enough for the tiny teacher to
# learn the keywords (dev accuracy ~0.8, best dev state before the last step), under 2 s of training.
RECIPE = """
[run]
name = "resume"
seed = 7
threads = 1

[task]
dataset = "data.csv"
max_length = 24

[teacher]
model = "{teacher}"

[stages.finetune]
epochs = 4
batch_size = 8
lr = 5e-3
checkpoint_every = 5

[export]
enabled = false

[report]
enabled = false
"""

# Imported by every Python process that has its folder on PYTHONPATH (see the module docstring).
PAUSE_HOOK = '''
import os
import signal
import time
from pathlib import Path

import distill.train.loop as loop

PAUSE_AT = int(os.environ["DISTILL_TEST_PAUSE_AT"])
MARKER = Path(os.environ["DISTILL_TEST_PAUSE_MARKER"])
_train = loop.train
# As in an interactive shell, Ctrl-C raises KeyboardInterrupt even when the test runner ignores it.
signal.signal(signal.SIGINT, signal.default_int_handler)


def train(model, loss_fn, *args, **kwargs):
    calls = 0

    def paused_loss(model, batch):
        nonlocal calls
        calls += 1
        if calls == PAUSE_AT:
            MARKER.write_text(str(calls))
            for _ in range(6000):  # killed by the test long before; never an orphan for good
                time.sleep(0.1)
            os._exit(3)
        return loss_fn(model, batch)

    return _train(model, paused_loss, *args, **kwargs)


loop.train = train
'''


def _write_teacher(directory: Path) -> None:
    """A random tiny BERT encoder with a WordPiece tokenizer, as `save_pretrained` writes them."""
    directory.mkdir()
    words = sorted({w for group in LABEL_WORDS.values() for w in group} | set(FILLER))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, "##s", "##ed", "##ing", ".", ","]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizerFast(str(directory / "vocab.txt")).save_pretrained(directory)
    assert BertTokenizerFast.from_pretrained(directory).tokenize("good movie") == ["good", "movie"]
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        initializer_range=0.1,  # learns within a few epochs
    )
    BertModel(config).save_pretrained(directory)


def _write_data(path: Path) -> None:
    """200 distinct rows, 3 labels; each text holds one or two words of its label among 1-4 fillers."""
    rng = random.Random(0)
    rows, seen = [], set()
    labels = list(LABEL_WORDS)
    while len(rows) < 200:
        label = labels[len(rows) % 3]
        words = rng.sample(FILLER, rng.randint(1, 4)) + rng.sample(LABEL_WORDS[label], rng.randint(1, 2))
        rng.shuffle(words)
        text = " ".join(words)
        if text not in seen:
            seen.add(text)
            rows.append(f"{text},{label}")
    path.write_text("text,label\n" + "\n".join(rows) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """Teacher, data and recipe, shared by every run of this module."""
    root = tmp_path_factory.mktemp("resume")
    _write_teacher(root / "teacher")
    _write_data(root / "data.csv")
    (root / "recipe.toml").write_text(RECIPE.format(teacher=(root / "teacher").as_posix()), encoding="utf-8")
    (root / "hook").mkdir()
    (root / "hook" / "sitecustomize.py").write_text(PAUSE_HOOK, encoding="utf-8")
    return root


_STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True, scope="module")
def _no_leftover_processes():
    """A failing test must not leave a paused run behind."""
    yield
    for process in _STARTED:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()


def _env(workspace: Path, pause_at: int | None, marker: Path | None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("DISTILL_TEST_")}
    paths = [str(REPO), env.get("PYTHONPATH")]
    if pause_at is not None:
        paths.insert(0, str(workspace / "hook"))
        env.update(DISTILL_TEST_PAUSE_AT=str(pause_at), DISTILL_TEST_PAUSE_MARKER=str(marker))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    env["TQDM_DISABLE"] = "1"
    return env


def _command(out: Path) -> list[str]:
    return [sys.executable, "-m", "distill", "run", "recipe.toml", "--out", str(out)]


def run_to_end(workspace: Path, out: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(
        _command(out), cwd=workspace, env=_env(workspace, None, None), capture_output=True, text=True, timeout=WAIT_S
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    return done


def start_paused(workspace: Path, out: Path, pause_at: int) -> tuple[subprocess.Popen, Path]:
    """Start a run that stops (alive) inside its `pause_at`-th loss computation; wait until it does."""
    marker = out.parent / f".paused-{out.name}-{pause_at}"
    marker.unlink(missing_ok=True)
    process = subprocess.Popen(
        _command(out),
        cwd=workspace,
        env=_env(workspace, pause_at, marker),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, killed as a whole
    )
    _STARTED.append(process)
    deadline = time.monotonic() + WAIT_S
    while not marker.exists():
        if process.poll() is not None:
            _, err = process.communicate()
            pytest.fail(f"the run ended (code {process.returncode}) before its pause point: {err[-3000:]}")
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            pytest.fail(f"the run did not reach its pause point within {WAIT_S} s")
        time.sleep(0.05)
    return process, marker


def checkpoint_step(run_dir: Path) -> int:
    state = torch.load(run_dir / ".finetune.partial" / ".train" / "checkpoint" / "state.pt", weights_only=True)
    return state["progress"]["global_step"]


def assert_stopped_mid_stage(run_dir: Path) -> None:
    assert (run_dir / ".finetune.partial" / ".train" / "checkpoint").is_dir()
    assert not (run_dir / "done" / "finetune.json").exists()
    assert not (run_dir / "teacher").exists()
    assert (run_dir / "done" / "prepare.json").is_file()


def kill(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL


def outcome(run_dir: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    metrics = json.loads((run_dir / "teacher" / "metrics.json").read_text(encoding="utf-8"))
    metrics.pop("seconds")  # wall time of the last process only, and its split by phase
    metrics.pop("seconds_by_phase")
    return metrics, load_file(run_dir / "teacher" / "model.safetensors")


def assert_same_outcome(run_dir: Path, reference_dir: Path) -> None:
    metrics, weights = outcome(run_dir)
    expected_metrics, expected_weights = outcome(reference_dir)
    for split in ("dev", "test"):
        assert metrics[split]["accuracy"] == expected_metrics[split]["accuracy"]
        assert metrics[split]["confusion_matrix"] == expected_metrics[split]["confusion_matrix"]
    assert metrics == expected_metrics
    assert weights.keys() == expected_weights.keys()
    for name, tensor in expected_weights.items():
        torch.testing.assert_close(weights[name], tensor, rtol=0, atol=1e-6, msg=name)
    assert not (run_dir / ".finetune.partial").exists()
    done = json.loads((run_dir / "done" / "finetune.json").read_text(encoding="utf-8"))
    reference = json.loads((reference_dir / "done" / "finetune.json").read_text(encoding="utf-8"))
    assert done["config_hash"] == reference["config_hash"]


@pytest.fixture(scope="module")
def reference(workspace: Path) -> Path:
    """The uninterrupted run."""
    run_to_end(workspace, workspace / "uninterrupted")
    run_dir = workspace / "uninterrupted" / "resume"
    metrics, _ = outcome(run_dir)
    assert metrics["steps"] == 80
    return run_dir


@pytest.mark.slow
def test_sigkill_twice_then_resume_matches_uninterrupted_run(workspace, reference):
    out = workspace / "killed"
    run_dir = out / "resume"

    # Kill 1: in step 8 of epoch 1 (checkpoint of step 5 on disk, steps 6-7 lost).
    process, _ = start_paused(workspace, out, pause_at=8)
    assert checkpoint_step(run_dir) == 5
    kill(process)
    assert_stopped_mid_stage(run_dir)
    assert checkpoint_step(run_dir) == 5

    # Kill 2: the rerun resumes at step 5; its 58th loss is step 63 of epoch 4, past three
    # epoch-end evaluations, so the checkpoint (step 60) also carries the best dev state.
    process, _ = start_paused(workspace, out, pause_at=58)
    assert checkpoint_step(run_dir) == 60
    assert (run_dir / ".finetune.partial" / ".train" / "checkpoint" / "best.pt").is_file()
    kill(process)
    assert_stopped_mid_stage(run_dir)

    finished = run_to_end(workspace, out)
    assert "[finetune] resuming" in finished.stderr
    assert "[prepare] done already, skipped" in finished.stderr
    assert_same_outcome(run_dir, reference)


@pytest.fixture(scope="module")
def interrupted(workspace: Path) -> tuple[int, str, Path]:
    """A run stopped by SIGINT (Ctrl-C) in step 13: (exit code, stderr, run directory)."""
    out = workspace / "interrupted"
    process, _ = start_paused(workspace, out, pause_at=13)  # checkpoint of step 10 on disk
    os.kill(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=WAIT_S)
    return process.returncode, err, out / "resume"


@pytest.mark.slow
def test_ctrl_c_exits_130_and_resumes_exactly(workspace, reference, interrupted):
    code, err, run_dir = interrupted
    assert code == 130, err[-3000:]
    assert "Traceback" not in err
    assert "[finetune] interrupted; rerun `distill run` to resume" in err
    assert_stopped_mid_stage(run_dir)
    # Interrupted between two weight updates: the checkpoint is rewritten at the start of step 13.
    assert checkpoint_step(run_dir) == 12

    run_to_end(workspace, run_dir.parent)
    assert_same_outcome(run_dir, reference)


@pytest.mark.slow
def test_ctrl_c_ends_with_the_resume_hint(interrupted):
    """click hands Ctrl-C over as Abort; the command line still says how to go on."""
    code, err, _ = interrupted
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 130
    assert lines[-1] == INTERRUPTED
    assert sum(INTERRUPTED in line for line in lines) == 1
