"""Shallow word-level students (BOW, CNN, BiGRU) for data distillation.

ERNIE's data distillation trains these on teacher-labelled augmented text; they are tiny
and serve in well under a millisecond on a CPU. Every model maps word ids (batch, length),
padded with 0 on the right, to logits (batch, num_labels), gives the same logits however
much padding follows a text, and exports to ONNX with dynamic batch and length (no
Python control flow that depends on tensor values or sizes).

With `head = "token"` (token classification) CNN and BiGRU keep one feature vector per word
instead of pooling them, and give logits (batch, length, num_labels): word i's tags at
position i. The CNN's windows are then centred on their word, so a word sees its neighbours on
both sides. BOW averages the words away and has no per-word view, so it has no such head.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from distill.data.words import LANGUAGES, PAD_ID, WordVocab
from distill.errors import UserError

SHALLOW_KINDS: tuple[str, ...] = ("bow", "cnn", "bigru")
# A student's output: one row per text (`sequence`) or per word (`token`), as a task family's `head`.
HEADS: tuple[str, ...] = ("sequence", "token")
TOKEN_KINDS: tuple[str, ...] = ("cnn", "bigru")  # the kinds that keep a vector per word

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.json"


@dataclass
class ShallowConfig:
    """Everything needed to rebuild a shallow student; saved as config.json beside it."""

    kind: str
    vocab_size: int
    num_labels: int
    embed_dim: int = 128
    hidden: int = 128
    kernel_sizes: tuple[int, ...] = (2, 3, 4)
    channels: int = 128
    dropout: float = 0.1
    max_len: int = 128
    language: str = "en"
    id2label: dict[int, str] = field(default_factory=dict)
    head: str = "sequence"

    def __post_init__(self) -> None:
        self.kernel_sizes = tuple(int(size) for size in self.kernel_sizes)
        self.id2label = {int(index): str(name) for index, name in self.id2label.items()}
        if not self.id2label:
            self.id2label = {index: f"LABEL_{index}" for index in range(self.num_labels)}
        self._validate()

    def _validate(self) -> None:
        where = "shallow student config"
        if self.kind not in SHALLOW_KINDS:
            kinds = list(SHALLOW_KINDS)
            raise UserError(f"unknown shallow student {self.kind!r}", where, f"use one of {kinds}")
        if self.language not in LANGUAGES:
            languages = list(LANGUAGES)
            raise UserError(f"unknown language {self.language!r}", where, f"use one of {languages}")
        for name in ("vocab_size", "num_labels", "embed_dim", "hidden", "channels", "max_len"):
            value = getattr(self, name)
            if value < 1:
                raise UserError(f"{name} must be >= 1, got {value}", where, "use a positive size")
        if not self.kernel_sizes or min(self.kernel_sizes) < 1:
            sizes = list(self.kernel_sizes)
            raise UserError(f"kernel_sizes must be positive, got {sizes}", where, "e.g. [2, 3, 4]")
        require_head(self.kind, self.head, where)
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"dropout must be in [0, 1), got {self.dropout}", where, "e.g. 0.1")
        if sorted(self.id2label) != list(range(self.num_labels)):
            raise UserError(
                f"id2label must name ids 0..{self.num_labels - 1}, got {sorted(self.id2label)}",
                where,
                "give one name per label id",
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ShallowConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(
                f"unknown shallow config keys {unknown}", CONFIG_FILE, f"keep only {sorted(known)}"
            )
        return cls(**values)


def require_head(kind: str, head: str, where: str) -> None:
    """A UserError unless a `kind` student can have a `head` output (BOW has no per-word view)."""
    if head not in HEADS:
        raise UserError(f"unknown head {head!r}", where, f"use one of {list(HEADS)}")
    if head == "token" and kind not in TOKEN_KINDS:
        raise UserError(
            f"{kind} has no per-token output (it averages a text's words into one vector), so it cannot tag tokens",
            where,
            f"use {' or '.join(TOKEN_KINDS)} for token classification",
        )


def masked_max_over_time(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max over the real positions of (batch, length, dim) -> (batch, dim).

    Position 0 always counts, so an empty text (all padding) pools to finite values.
    """
    positions = torch.arange(mask.shape[1], device=mask.device)  # (length,)
    keep = mask | (positions == 0).unsqueeze(0)  # (batch, length)
    lowest = torch.finfo(features.dtype).min
    return features.masked_fill(~keep.unsqueeze(-1), lowest).amax(dim=1)


class BOWClassifier(nn.Module):
    """Mean of the word embeddings of a text, then a one-hidden-layer MLP."""

    def __init__(self, config: ShallowConfig) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(config.vocab_size, config.embed_dim, padding_idx=PAD_ID)
        self.classifier = nn.Sequential(
            nn.Linear(config.embed_dim, config.hidden),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, config.num_labels),
        )

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = (input_ids != PAD_ID).unsqueeze(-1).to(self.embeddings.weight.dtype)
        # mask: (batch, length, 1)
        summed = (self.embeddings(input_ids) * mask).sum(dim=1)  # (batch, embed_dim)
        mean = summed / mask.sum(dim=1).clamp(min=1.0)  # (batch, embed_dim)
        return self.classifier(mean)  # (batch, num_labels)


class _WordFeatureModel(nn.Module):
    """A student that computes one feature vector per word and ends in `head`: max-pooled over the
    text's words for one output per text, or kept per word for one output per word (tagging)."""

    def __init__(self, config: ShallowConfig) -> None:
        super().__init__()
        self.per_token = config.head == "token"

    def add_head(self, config: ShallowConfig, features: int) -> None:
        """Dropout and the output layer, made last so that a seed gives the same initial weights
        as before the per-word head existed (layers draw their init in order of creation)."""
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(features, config.num_labels)

    def head(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(batch, length, features) -> (batch, length, num_labels) per word, else (batch, num_labels)."""
        if not self.per_token:
            features = masked_max_over_time(features, mask)  # (batch, features)
        return self.classifier(self.dropout(features))


class CNNClassifier(_WordFeatureModel):
    """Kim-style CNN: convolutions of several widths, ReLU, max over time, linear.

    The ids are padded inside so that every real word has a full window of each width (texts
    shorter than the widest kernel work) and padding never changes the output: one window per
    word is kept, the one starting at the word (pooled over the text), or per word the one
    centred on it (a tagger), and only windows of real words are pooled.
    """

    def __init__(self, config: ShallowConfig) -> None:
        super().__init__(config)
        # Words before the window's own word: none when pooling, half the window when tagging.
        self.before = [(size - 1) // 2 if self.per_token else 0 for size in config.kernel_sizes]
        self.left = max(self.before)
        self.right = max(size - 1 - before for size, before in zip(config.kernel_sizes, self.before))
        self.embeddings = nn.Embedding(config.vocab_size, config.embed_dim, padding_idx=PAD_ID)
        self.convolutions = nn.ModuleList(
            nn.Conv1d(config.embed_dim, config.channels, kernel_size=size)
            for size in config.kernel_sizes
        )
        self.add_head(config, config.channels * len(config.kernel_sizes))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        length = input_ids.shape[1]
        mask = input_ids != PAD_ID  # (batch, length)
        padded = F.pad(input_ids, (self.left, self.right), value=PAD_ID)  # (batch, left + length + right)
        embedded = self.embeddings(padded).transpose(1, 2)  # (batch, embed_dim, left + length + right)
        activations = []
        for convolution, before in zip(self.convolutions, self.before):
            # Window j covers padded positions j..j+k-1; word t's window starts at t + left - before.
            start = self.left - before
            features = convolution(embedded)[:, :, start : start + length]  # (batch, channels, length)
            activations.append(F.relu(features).transpose(1, 2))  # (batch, length, channels)
        return self.head(torch.cat(activations, dim=-1), mask)


class BiGRUClassifier(_WordFeatureModel):
    """Bidirectional GRU with max pooling over time; ERNIE's strongest shallow student.

    Two one-way GRUs instead of `bidirectional=True`: the backward one reads each text
    reversed within its own length, which gives the exact backward pass over real words
    without packed sequences (which neither ignore nor export padding cleanly). Its states are
    put back in word order, so position t holds both directions' state at word t.
    """

    def __init__(self, config: ShallowConfig) -> None:
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.embed_dim, padding_idx=PAD_ID)
        self.forward_gru = nn.GRU(config.embed_dim, config.hidden, batch_first=True)
        self.backward_gru = nn.GRU(config.embed_dim, config.hidden, batch_first=True)
        self.hidden = config.hidden  # a constant width, so the exported graph expands indices to it
        self.add_head(config, 2 * config.hidden)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = input_ids != PAD_ID  # (batch, length)
        embedded = self.embeddings(input_ids)  # (batch, length, embed_dim)
        forward_states, _ = self.forward_gru(embedded)  # (batch, length, hidden)
        order = reverse_within_length(mask)  # (batch, length); reversing twice restores the order
        backward_states, _ = self.backward_gru(self.embeddings(input_ids.gather(1, order)))
        # backward_states: (batch, length, hidden), position t = real word (length_b - 1 - t)
        in_word_order = backward_states.gather(1, order.unsqueeze(-1).expand(-1, -1, self.hidden))
        return self.head(torch.cat([forward_states, in_word_order], dim=-1), mask)  # features (batch, length, 2 * hidden)


def reverse_within_length(mask: torch.Tensor) -> torch.Tensor:
    """Gather indices that reverse each row's real prefix and leave its padding in place."""
    lengths = mask.sum(dim=1, keepdim=True)  # (batch, 1)
    positions = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0)  # (1, length)
    return torch.where(mask, lengths - 1 - positions, positions)  # (batch, length)


_MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "bow": BOWClassifier,
    "cnn": CNNClassifier,
    "bigru": BiGRUClassifier,
}


def build_shallow(config: ShallowConfig) -> nn.Module:
    return _MODEL_CLASSES[config.kind](config)


def save_shallow(
    model: nn.Module, config: ShallowConfig, vocab: WordVocab, out_dir: str | Path
) -> None:
    """Write model.safetensors, config.json and vocab.json: all that serving needs."""
    if len(vocab) != config.vocab_size:
        raise UserError(
            f"vocabulary has {len(vocab)} words but the config says {config.vocab_size}",
            str(out_dir),
            "build the config from len(vocab)",
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {name: value.detach().cpu().contiguous() for name, value in model.state_dict().items()}
    save_file(state, str(out_dir / MODEL_FILE))
    config_json = json.dumps(config.to_dict(), indent=2, ensure_ascii=False)
    (out_dir / CONFIG_FILE).write_text(config_json, encoding="utf-8")
    vocab.save(out_dir / VOCAB_FILE)


def load_shallow(
    model_dir: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, ShallowConfig, WordVocab]:
    """Rebuild a saved shallow student, in eval mode on `device`."""
    model_dir = Path(model_dir)
    expected = (MODEL_FILE, CONFIG_FILE, VOCAB_FILE)
    missing = [name for name in expected if not (model_dir / name).is_file()]
    if missing:
        raise UserError(
            f"not a shallow student folder: missing {missing}",
            str(model_dir),
            "point to a folder written by save_shallow (e.g. RUN_DIR/cnn)",
        )
    config_json = (model_dir / CONFIG_FILE).read_text(encoding="utf-8")
    config = ShallowConfig.from_dict(json.loads(config_json))
    vocab = WordVocab.load(model_dir / VOCAB_FILE)
    model = build_shallow(config)
    try:
        model.load_state_dict(load_file(str(model_dir / MODEL_FILE)))
    except RuntimeError as error:
        raise UserError(
            f"{MODEL_FILE} does not match {CONFIG_FILE} ({str(error).splitlines()[0]})",
            str(model_dir),
            "save the model and its config together with save_shallow",
        ) from None
    return model.to(device).eval(), config, vocab
