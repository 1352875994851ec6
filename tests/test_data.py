"""The Time Machine pipeline, as d2l builds it; no test touches the network."""

import random
from pathlib import Path

import pytest
import torch

from bench.cli import main
from bench.d2l import data
from bench.d2l.data import DataError, SeqDataLoader, Vocab, load_corpus, seq_data_iter_random, seq_data_iter_sequential
from bench.d2l.model import RNNModel, d2l_init_
from bench.d2l.train import train

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "timemachine.txt"
needs_book = pytest.mark.skipif(not SHARED.is_file(), reason=f"the book is not at {SHARED}")

SMALL_TEXT = "The Time Machine, by H. G. Wells [1898]\n\nI\n\nThe Time Traveller (for so it will be convenient!)\n" * 40


@pytest.fixture
def small_file(tmp_path) -> Path:
    path = tmp_path / "small.txt"
    path.write_text(SMALL_TEXT)
    return path


@needs_book
def test_the_book_as_d2l_sees_it():
    assert data.sha1_of(SHARED) == data.DATA_SHA1
    corpus, vocab = load_corpus(SHARED)
    assert len(vocab) == 28 and len(corpus) == 170_580
    assert vocab.idx_to_token[:3] == ["<unk>", " ", "e"]
    corpus, _ = load_corpus(SHARED, max_tokens=data.DEFAULT_MAX_TOKENS)
    for random_iter in (False, True):
        for seed in range(5):
            assert len(list(SeqDataLoader(corpus, 32, 35, random_iter, seed=seed))) == 8


def test_preprocessing_and_vocab(small_file):
    lines = data.read_time_machine(small_file)
    assert lines[0] == "the time machine by h g wells" and lines[1] == ""
    vocab = Vocab([list(line) for line in lines])
    assert vocab.idx_to_token[0] == "<unk>" and vocab["?"] == 0
    freqs = [f for _, f in vocab.token_freqs]
    assert freqs == sorted(freqs, reverse=True)
    corpus, _ = load_corpus(small_file, max_tokens=100)
    assert len(corpus) == 100


@pytest.mark.parametrize("iter_fn", [seq_data_iter_sequential, seq_data_iter_random])
def test_iterators_shapes_shift_and_counts(iter_fn):
    corpus = list(range(1000))  # token id == position, so shifts and offsets are visible
    B, T = 4, 7
    for seed in range(10):
        batches = list(iter_fn(corpus, B, T, random.Random(seed)))
        for X, Y in batches:
            assert X.shape == Y.shape == (B, T)
            assert torch.equal(Y, X + 1)  # targets are the inputs shifted by one token
            assert torch.equal(X[:, 1:] - X[:, :-1], torch.ones(B, T - 1, dtype=X.dtype))
        offset = batches[0][0].min().item() if iter_fn is seq_data_iter_sequential else None
        if iter_fn is seq_data_iter_sequential:
            assert 0 <= offset <= T
            assert len(batches) == ((len(corpus) - offset - 1) // B) // T
            for (X0, _), (X1, _) in zip(batches, batches[1:]):
                assert torch.equal(X1[:, 0], X0[:, -1] + 1)  # each row continues where it ended
        else:
            starts = torch.cat([X[:, 0] for X, _ in batches])
            offset = starts.min().item() % T
            assert 0 <= offset < T and bool(((starts - offset) % T == 0).all())
            assert len(set(starts.tolist())) == len(starts)  # no subsequence twice
            assert len(batches) == ((len(corpus) - offset - 1) // T) // B


def test_download_from_a_file_url_checks_sha1(tmp_path, small_file):
    sha1 = data.sha1_of(small_file)
    got = data.download(small_file.as_uri(), sha1, folder=tmp_path / "cache")
    assert got.read_text() == SMALL_TEXT
    small_file.unlink()  # the cached copy is used from now on
    assert data.download(small_file.as_uri(), sha1, folder=tmp_path / "cache") == got
    with pytest.raises(DataError, match="cannot download"):
        data.download((tmp_path / "missing.txt").as_uri(), sha1, folder=tmp_path / "other")
    bad = tmp_path / "bad.txt"
    bad.write_text("not the book")
    with pytest.raises(DataError, match="expected"):
        data.download(bad.as_uri(), sha1, folder=tmp_path / "third")
    assert not (tmp_path / "third" / "bad.txt").exists()


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LSTM_BENCH_DATA", str(tmp_path))
    assert data.cache_dir() == tmp_path


def test_short_training_run_lowers_perplexity(small_file, tmp_path):
    corpus, vocab = load_corpus(small_file)
    loader = SeqDataLoader(corpus, 8, 10, seed=0)
    model = d2l_init_(RNNModel("cudnn", len(vocab), 32))
    curve = tmp_path / "curve.csv"
    lines = []
    train(model, loader, vocab, lr=1.0, num_epochs=1, device=torch.device("cpu"), log=lines.append)
    first = float(lines[-3].split()[1].rstrip(","))
    ppl, speed = train(model, loader, vocab, lr=1.0, num_epochs=15, device=torch.device("cpu"), curve=curve,
                       log=lines.append)
    assert ppl < 0.7 * first and speed > 0
    assert lines[-3].startswith("perplexity ") and "tokens/sec on cpu" in lines[-3]
    assert lines[-2].startswith("time traveller") and lines[-1].startswith("traveller")
    rows = curve.read_text().splitlines()
    assert rows[0] == "epoch,perplexity,tokens_per_s,elapsed_s" and len(rows) == 16


def test_train_command_end_to_end(small_file, tmp_path, capsys):
    curve = tmp_path / "c.csv"
    assert main(["train", "--impl", "scratch", "--epochs", "2", "--hidden-size", "16", "--batch-size", "4",
                 "--num-steps", "5", "--data", str(small_file), "--curve", str(curve)]) == 0
    out = capsys.readouterr().out
    assert "perplexity" in out and "tokens/sec on cpu" in out
    assert len(curve.read_text().splitlines()) == 3


@pytest.mark.parametrize("argv, message", [
    (["train", "--impl", "nope"], "unknown LSTM implementation 'nope'"),
    (["train", "--epochs", "0"], "must be positive"),
    (["train", "--lr", "abc"], "is not a number"),
    (["train", "--device", "tpu"], "choose auto, cpu, cuda or cuda:N"),
    (["train", "--data", "/no/such/file.txt"], "no such data file"),
])
def test_train_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        raise SystemExit(main(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_train_command_deep_lstm(small_file, capsys):
    """`train --num-layers 2 --lr 2`: the book's deep LSTM section, a few epochs on a small corpus."""
    assert main(["train", "--impl", "fused", "--num-layers", "2", "--lr", "2", "--epochs", "3", "--hidden-size",
                 "16", "--batch-size", "4", "--num-steps", "5", "--data", str(small_file)]) == 0
    out = capsys.readouterr().out
    assert "hidden 16 x 2 layers, lr 2.0" in out and "tokens/sec on cpu" in out
