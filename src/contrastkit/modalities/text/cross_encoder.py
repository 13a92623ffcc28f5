"""A cross-encoder: one Transformer reads both sentences of a pair at once and scores the pair.

``score(a, b) = sigmoid( w . mean_t h_t + c )`` where ``h`` are the last hidden states of the pair
encoded as *one* sequence by the tokenizer's pair encoding (``[CLS] a [SEP] b [SEP]``, with
``token_type_ids`` 0 for a and 1 for b), mean-pooled under the attention mask, and ``(w, c)`` a
linear regression head. Every token of a attends to every token of b: that is what makes it a
stronger scorer than a bi-encoder, and what makes it too slow to embed a corpus (a pair per pass).

Trained on STS-B train as sentence-transformers trains its STS cross-encoders: the target is the
gold score / 5 in [0, 1], the loss binary cross-entropy on the logit (:func:`train_cross_encoder`).
It is the teacher of Distilled Sentence Embedding (:mod:`contrastkit.modalities.text.methods.dse`).

Saved as a Hugging Face folder (Transformer + tokenizer) plus ``score_head.safetensors`` and
``contrastkit_cross_encoder.json`` (pooling, maximum length). :func:`cached_pair_scores` keeps the
teacher's scores of pairs on disk, keyed by the teacher's weights, so a student run (and its
resume) reads the same float32 values instead of recomputing them.

Command line (train a teacher)::

    python -m contrastkit.modalities.text.cross_encoder --data ../shared/data/stsb/sts-train.csv \\
        --out runs/stsb-cross-encoder --max-steps 360 --batch-size 16 --lr 2e-5 --seed 0
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.modalities.text.encoders import _model_inputs, load_transformer, pool_tokens, save_transformer

HEAD_FILE = "score_head.safetensors"
SETTINGS_FILE = "contrastkit_cross_encoder.json"
SCORE_SCALE = 5.0  # STS-B scores are 0..5; the cross-encoder predicts score / 5


class CrossEncoder(nn.Module):
    """Transformer over the pair as one sequence, mean pooling, a linear head to one logit."""

    def __init__(self, transformer: nn.Module, tokenizer, max_length: int = 128) -> None:
        super().__init__()
        self.transformer = transformer
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.head = nn.Linear(int(transformer.config.hidden_size), 1)

    @classmethod
    def from_backbone(cls, name_or_path: str | os.PathLike = "minilm", max_length: int = 128,
                      seed: int = 0) -> CrossEncoder:
        """A new cross-encoder on a local model folder (``minilm``), its head drawn from ``seed``."""
        _, transformer, tokenizer = load_transformer(name_or_path)
        if getattr(transformer, "pooler", None) is not None:
            # Unused (the head reads mean-pooled states); a folder without its weights would draw new ones at
            # each load, and the weights' fingerprint (the key of the cached scores) would change with them.
            transformer.pooler = None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(transformer, tokenizer, max_length=max_length)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> CrossEncoder:
        """A cross-encoder written by :meth:`save`."""
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / HEAD_FILE).is_file() or not (folder / SETTINGS_FILE).is_file():
            raise DataError(f"'{folder}' is not a saved cross-encoder: it needs {HEAD_FILE} and {SETTINGS_FILE} "
                            "beside the Transformer (train one with python -m contrastkit.modalities.text.cross_encoder).")
        settings = json.loads((folder / SETTINGS_FILE).read_text())
        model = cls.from_backbone(folder, max_length=int(settings["max_length"]))
        model.head.load_state_dict(load_file(str(folder / HEAD_FILE)))
        return model

    def save(self, folder: str | os.PathLike) -> Path:
        from safetensors.torch import save_file

        folder = save_transformer(folder, self.transformer, self.tokenizer)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}, str(folder / HEAD_FILE))
        (folder / SETTINGS_FILE).write_text(json.dumps({"pooling": "mean", "max_length": self.max_length}, indent=2))
        return folder

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def tokenize_pairs(self, first: Sequence[str], second: Sequence[str]) -> dict[str, torch.Tensor]:
        """Each pair as one sequence (the tokenizer's pair encoding), padded to the batch's longest."""
        if len(first) != len(second):
            raise DataError(f"A cross-encoder scores pairs: {len(first)} first and {len(second)} second sentences.")
        return dict(self.tokenizer(list(first), list(second), padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt"))

    def logits(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B,) logits of the tokenised pairs."""
        hidden = self.transformer(**_model_inputs(tokens, self.device)).last_hidden_state
        pooled = pool_tokens(hidden, tokens["attention_mask"].to(hidden.device), "mean")
        return self.head(pooled).squeeze(-1)

    @torch.inference_mode()
    def score(self, first: Sequence[str], second: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """sigmoid scores in [0, 1] (float32, CPU), eval mode. ``batch_size=1`` scores each pair in a
        pass of its own, so its score does not depend on which pairs share its batch (padding)."""
        if batch_size < 1:
            raise ConfigError(f"batch_size must be positive, got {batch_size}.")
        was_training = self.training
        self.eval()
        try:
            chunks = [torch.sigmoid(self.logits(self.tokenize_pairs(first[i:i + batch_size], second[i:i + batch_size])))
                      .float().cpu() for i in range(0, len(first), batch_size)]
        finally:
            self.train(was_training)
        return torch.cat(chunks) if chunks else torch.empty(0)


def cross_encoder_fingerprint(model: CrossEncoder) -> str:
    """sha256 of every weight of the Transformer and the head, and the maximum length."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    digest.update(f"|{model.max_length}".encode())
    return digest.hexdigest()


class PairScoreCache:
    """A teacher's scores of sentence pairs, in memory and appended to a JSONL file.

    Each line is ``{"a": ..., "b": ..., "score": float.hex()}`` (the float32 value written exactly), so a
    later run, or a resumed one, reads back the bit-identical scores. Missing pairs are scored one per
    pass (:meth:`CrossEncoder.score` with ``batch_size=1``): a pair's score never depends on the
    others scored with it.

    Several processes may share one file (the processes of a data-parallel run, two runs with the same
    teacher): each call appends its new lines with one ``write`` under an exclusive lock, so lines never
    interleave. A last line without its newline is a write that a killed process cut short: it is left
    out on reading (its pairs are scored again) and cut away by the next append."""

    def __init__(self, teacher: CrossEncoder, path: str | os.PathLike | None) -> None:
        self.teacher = teacher
        self.path = Path(path) if path is not None else None
        self.scores: dict[tuple[str, str], float] = {}
        if self.path is not None and self.path.is_file():
            text = self.path.read_text(encoding="utf-8")
            complete = text if text.endswith("\n") else text[:text.rfind("\n") + 1]  # drop a cut-short write
            for number, line in enumerate(complete.splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    self.scores[(row["a"], row["b"])] = float.fromhex(row["score"])
                except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
                    raise DataError(f"Line {number} of the pair-score cache '{self.path}' is not a cached score "
                                    f"({error}); delete the file to score the pairs again.") from None

    def __call__(self, first: Sequence[str], second: Sequence[str]) -> torch.Tensor:
        """(N,) float32 scores of the pairs, scoring and caching the missing ones."""
        missing = list(dict.fromkeys((a, b) for a, b in zip(first, second) if (a, b) not in self.scores))
        if missing:
            new = self.teacher.score([a for a, _ in missing], [b for _, b in missing], batch_size=1)
            lines = []
            for (a, b), value in zip(missing, new.tolist()):
                self.scores[(a, b)] = value
                lines.append(json.dumps({"a": a, "b": b, "score": float(value).hex()}, ensure_ascii=False))
            if self.path is not None:
                append_lines(self.path, lines)
        return torch.tensor([self.scores[(a, b)] for a, b in zip(first, second)], dtype=torch.float32)


def append_lines(path: Path, lines: Sequence[str]) -> None:
    """Append ``lines`` to ``path`` in one ``os.write`` under an exclusive ``flock`` (where the system has
    one), after cutting away a last line that a killed writer left without its newline (:class:`PairScoreCache`)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: one write call, unlocked
        fcntl = None
    path.parent.mkdir(parents=True, exist_ok=True)
    data = ("\n".join(lines) + "\n").encode("utf-8")
    descriptor = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        size = os.fstat(descriptor).st_size
        if size and os.pread(descriptor, 1, size - 1) != b"\n":
            os.ftruncate(descriptor, end_of_last_line(descriptor, size))
        view = memoryview(data)
        while view:
            view = view[os.write(descriptor, view):]
    finally:
        os.close(descriptor)  # releases the lock


def end_of_last_line(descriptor: int, size: int, chunk: int = 1 << 16) -> int:
    """The offset just after the file's last newline (0 when it has none)."""
    end = size
    while end > 0:
        start = max(0, end - chunk)
        found = os.pread(descriptor, end - start, start).rfind(b"\n")
        if found >= 0:
            return start + found + 1
        end = start
    return 0


def default_score_cache(teacher: CrossEncoder, cache_dir: str | os.PathLike | None = None) -> Path:
    """``<cache_dir>/pair-scores/<fingerprint>.jsonl`` (cache_dir: ``$CONTRASTKIT_CACHE``)."""
    from contrastkit.modalities.text.evaluation import default_cache_dir

    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / "pair-scores" / f"{cross_encoder_fingerprint(teacher)[:32]}.jsonl"


class ScoredPairRows(Dataset):
    """The row positions of the scored pairs: a batch is ``{"index": LongTensor}``; the pairs themselves
    stay with :class:`ScoredPairRegression` (the engine's loader only draws which rows)."""

    def __init__(self, num_pairs: int):
        self.num_pairs = num_pairs

    def __len__(self) -> int:
        return self.num_pairs

    def __getitems__(self, positions: list[int]) -> dict:
        return {"index": torch.as_tensor(positions, dtype=torch.long)}


class ScoredPairRegression(nn.Module):
    """The cross-encoder's training objective as an engine method: binary cross-entropy of the pair's
    logit against its score / ``score_scale`` (sentence-transformers' STS cross-encoder loss)."""

    def __init__(self, model: CrossEncoder, first: Sequence[str], second: Sequence[str], targets: torch.Tensor):
        super().__init__()
        self.model = model
        self.first, self.second = list(first), list(second)
        self.register_buffer("targets", targets, persistent=False)

    def training_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        rows = batch["index"].tolist()
        tokens = self.model.tokenize_pairs([self.first[i] for i in rows], [self.second[i] for i in rows])
        return F.binary_cross_entropy_with_logits(self.model.logits(tokens), self.targets[batch["index"]]), {}


def train_cross_encoder(model: CrossEncoder, first: Sequence[str], second: Sequence[str], scores: Sequence[float],
                        max_steps: int, batch_size: int = 16, lr: float = 2e-5, warmup_steps: int | None = None,
                        seed: int = 0, score_scale: float = SCORE_SCALE, log_every: int = 50,
                        run_dir: str | os.PathLike | None = None) -> list[float]:
    """Fine-tune ``model`` on scored pairs through the engine: BCE of the logit against ``score / score_scale``.

    AdamW (weight decay 0.01 on weight matrices), linear warm-up (10 % of the steps by default) then
    linear decay to 0, gradient norm clipped at 1; the pairs reshuffled each epoch from ``seed``
    (incomplete last batches dropped), dropout reseeded per step as every engine run. The run folder
    (checkpoint, ``metrics.csv``) is ``run_dir``, or a temporary one. Returns the logged losses."""
    from contrastkit.engine import EpochShuffleSampler, TrainSettings, batch_loader, train

    targets = torch.as_tensor(list(scores), dtype=torch.float32) / score_scale
    if len(first) != len(second) or len(first) != len(targets):
        raise DataError("train_cross_encoder needs one score per pair.")
    if targets.min() < 0 or targets.max() > 1:
        raise DataError(f"The scores / {score_scale} must lie in [0, 1]; got {float(targets.min()):.3f} .. "
                        f"{float(targets.max()):.3f}. Give score_scale the maximum score.")
    if max_steps < 1 or batch_size < 1 or not lr > 0 or batch_size > len(first):
        raise ConfigError(f"max_steps and lr must be positive and batch_size in 1..{len(first)} (the pairs), got "
                          f"{max_steps}, {lr}, {batch_size}.")
    settings = TrainSettings(optimizer="adamw", lr=lr, weight_decay=0.01, schedule="warmup-linear",
                             warmup_steps=max(1, max_steps // 10) if warmup_steps is None else warmup_steps,
                             max_steps=max_steps, max_grad_norm=1.0, seed=seed, batch_size=batch_size,
                             log_every_steps=log_every)
    method = ScoredPairRegression(model, first, second, targets).train()  # dropout on (a loaded model is in eval mode)
    loader = batch_loader(ScoredPairRows(len(first)), EpochShuffleSampler(len(first), batch_size, seed))
    with contextlib.ExitStack() as stack:
        folder = Path(run_dir) if run_dir is not None else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        train(method, loader, settings, folder / "run" if run_dir is None else folder)
        with open((folder / "run" if run_dir is None else folder) / "metrics.csv") as handle:
            losses = [float(row["train/loss"]) for row in csv.DictReader(handle) if row.get("train/loss")]
    model.eval()
    return losses


def main(argv: Sequence[str] | None = None) -> int:
    """Train a cross-encoder on an STS file (STS Benchmark layout or named columns) and save it."""
    from contrastkit.modalities.text.sources import read_sts

    parser = argparse.ArgumentParser(prog="python -m contrastkit.modalities.text.cross_encoder",
                                     description="train a cross-encoder (a DSE teacher) on scored sentence pairs")
    parser.add_argument("--data", required=True, help="scored pairs, e.g. stsb/sts-train.csv")
    parser.add_argument("--out", required=True, help="folder to save the cross-encoder in")
    parser.add_argument("--backbone", default="minilm")
    parser.add_argument("--max-steps", type=int, default=None, help="default: one epoch")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--score-scale", type=float, default=SCORE_SCALE, help="the largest score (STS-B: 5)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    pairs = read_sts(args.data)
    steps = args.max_steps or math.ceil(len(pairs) / args.batch_size)
    model = CrossEncoder.from_backbone(args.backbone, max_length=args.max_length, seed=args.seed)
    losses = train_cross_encoder(model, pairs.first, pairs.second, pairs.scores, steps, args.batch_size, args.lr,
                                 seed=args.seed, score_scale=args.score_scale)
    model.save(args.out)
    print(f"cross-encoder trained {steps} steps (last loss {losses[-1]:.4f}), saved to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
