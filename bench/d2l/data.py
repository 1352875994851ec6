"""The Time Machine, as the d2l chapter loads it: download with a sha1 check, characters, a vocabulary
sorted by frequency, and the sequential and random-sampling minibatch iterators."""

from __future__ import annotations

import collections
import hashlib
import os
import random
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

DATA_URL = "http://d2l-data.s3-accelerate.amazonaws.com/timemachine.txt"
DATA_SHA1 = "090b5e7e70c295757f55df93cb0a180b9691891a"
DEFAULT_MAX_TOKENS = 10_000  # d2l's load_data_time_machine default


class DataError(Exception):
    """The corpus cannot be had: offline with no file, a file that fails its sha1 check, a file that is not
    text, or one too short to train on; the message is one line for the user."""


def cache_dir() -> Path:
    """$LSTM_BENCH_DATA, else the user cache dir ($XDG_CACHE_HOME or ~/.cache) / lstm-bench."""
    if os.environ.get("LSTM_BENCH_DATA"):
        return Path(os.environ["LSTM_BENCH_DATA"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lstm-bench"


def sha1_of(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str = DATA_URL, sha1: str = DATA_SHA1, folder: Path | None = None) -> Path:
    """d2l's `download`: return the cached file when its sha1 matches, else fetch it and check it."""
    folder = cache_dir() if folder is None else Path(folder)
    path = folder / url.rsplit("/", 1)[-1]
    if path.exists() and sha1_of(path) == sha1:
        return path
    folder.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            partial.write_bytes(response.read())
    except (urllib.error.URLError, OSError) as exc:
        partial.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        raise DataError(f"cannot download {url} ({reason}); pass --data PATH or put the file at {path}") from None
    if (got := sha1_of(partial)) != sha1:
        partial.unlink()
        raise DataError(f"{url} has sha1 {got}, expected {sha1}")
    partial.replace(path)
    return path


def read_time_machine(path: Path | None = None) -> list[str]:
    """Lines of the book: each run of non-letters becomes a space, then strip and lowercase."""
    path = download() if path is None else Path(path)
    if not path.is_file():
        raise DataError(f"no such data file: {path}")
    from bench.results import read_text

    text = read_text(path, DataError, f"data file {path}")
    lines = [re.sub("[^A-Za-z]+", " ", line).strip().lower() for line in text.splitlines()]
    if not any(lines):
        raise DataError(f"data file {path}: holds no letters to train on")
    return lines


class Vocab:
    """d2l's Vocab: tokens sorted by frequency (ties by first appearance), '<unk>' at index 0."""

    def __init__(self, tokens: list[list[str]]):
        counter = collections.Counter(token for line in tokens for token in line)
        self.token_freqs = sorted(counter.items(), key=lambda x: x[1], reverse=True)
        self.idx_to_token = ["<unk>"] + [token for token, _ in self.token_freqs]
        self.token_to_idx = {token: idx for idx, token in enumerate(self.idx_to_token)}

    def __len__(self) -> int:
        return len(self.idx_to_token)

    def __getitem__(self, token: str) -> int:
        return self.token_to_idx.get(token, 0)

    def to_tokens(self, indices: list[int]) -> list[str]:
        return [self.idx_to_token[i] for i in indices]


def load_corpus(path: Path | None = None, max_tokens: int = -1) -> tuple[list[int], Vocab]:
    """d2l's load_corpus_time_machine: character token ids of the whole book (first max_tokens if > 0)."""
    tokens = [list(line) for line in read_time_machine(path)]
    vocab = Vocab(tokens)
    corpus = [vocab[token] for line in tokens for token in line]
    return (corpus[:max_tokens] if max_tokens > 0 else corpus), vocab


def seq_data_iter_random(corpus: list[int], batch_size: int, num_steps: int,
                         rng: random.Random) -> Iterator[tuple[Tensor, Tensor]]:
    """Random sampling: random start offset, then shuffled, non-overlapping subsequences."""
    corpus = corpus[rng.randint(0, num_steps - 1):]
    num_subseqs = (len(corpus) - 1) // num_steps
    initial_indices = list(range(0, num_subseqs * num_steps, num_steps))
    rng.shuffle(initial_indices)
    num_batches = num_subseqs // batch_size
    for i in range(0, batch_size * num_batches, batch_size):
        starts = initial_indices[i: i + batch_size]
        X = [corpus[j: j + num_steps] for j in starts]
        Y = [corpus[j + 1: j + 1 + num_steps] for j in starts]
        yield torch.tensor(X), torch.tensor(Y)


def seq_data_iter_sequential(corpus: list[int], batch_size: int, num_steps: int,
                             rng: random.Random) -> Iterator[tuple[Tensor, Tensor]]:
    """Sequential partitioning: minibatch i+1 continues, row by row, where minibatch i ended."""
    offset = rng.randint(0, num_steps)
    num_tokens = ((len(corpus) - offset - 1) // batch_size) * batch_size
    Xs = torch.tensor(corpus[offset: offset + num_tokens]).reshape(batch_size, -1)
    Ys = torch.tensor(corpus[offset + 1: offset + 1 + num_tokens]).reshape(batch_size, -1)
    num_batches = Xs.shape[1] // num_steps
    for i in range(0, num_steps * num_batches, num_steps):
        yield Xs[:, i: i + num_steps], Ys[:, i: i + num_steps]


class SeqDataLoader:
    """d2l's SeqDataLoader: iterating again starts a new epoch with a new random offset."""

    def __init__(self, corpus: list[int], batch_size: int, num_steps: int, use_random_iter: bool = False,
                 seed: int | None = None):
        needed = self.min_tokens(batch_size, num_steps)
        if len(corpus) < needed:
            raise DataError(f"the corpus has {len(corpus)} tokens; one minibatch of {batch_size} x {num_steps} needs "
                            f"{needed} (lower --batch-size or --num-steps, raise --max-tokens, or give longer --data)")
        self.corpus, self.batch_size, self.num_steps = corpus, batch_size, num_steps
        self.iter_fn = seq_data_iter_random if use_random_iter else seq_data_iter_sequential
        self.rng = random.Random(seed)

    @staticmethod
    def min_tokens(batch_size: int, num_steps: int) -> int:
        """The fewest tokens that give every epoch at least one minibatch, whatever its random offset (up to
        num_steps for the sequential iterator, which also needs one more token for the targets)."""
        return batch_size * num_steps + num_steps + 1

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self.iter_fn(self.corpus, self.batch_size, self.num_steps, self.rng)
