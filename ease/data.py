"""WikiText-2 at the character level, through the `datasets` library.

Source order: the folder named by the environment variable EASE_DATA_DIR (holding train.txt,
valid.txt and test.txt, the tokenized "wikitext-2-v1" release), else the Hugging Face hub
dataset Salesforce/wikitext, config wikitext-2-v1 (the same text). A corpus may also be any
folder with train.txt and valid.txt. Missing data is an error; no text is ever made up.

The one exception is asked for by name: corpus "placeholder" is the text the original
experiment code trained on, without a warning, when its data files were missing (see
`placeholder_text`). It exists to test whether the published numbers came from it; it is never
a fallback.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

DATA_ENV = "EASE_DATA_DIR"
HUB_DATASET = ("Salesforce/wikitext", "wikitext-2-v1")
SPLIT_FILES = {"train": "train.txt", "valid": "valid.txt", "test": "test.txt"}
UNKNOWN_CHAR = "\ufffd"  # stands for validation characters missing from a train-only vocabulary


PLACEHOLDER = "placeholder"
# The original code's stand-in texts and the lengths it divided by to repeat them (the second
# sentence is 36 characters long, yet the original divided by 35, so its text overshoots).
PLACEHOLDER_SENTENCES = {"train": ("The quick brown fox jumps over the lazy dog. ", 45),
                         "valid": ("A quick brown dog runs in the park. ", 35)}


class DataNotFoundError(FileNotFoundError):
    """The corpus could not be found in any of the places it may come from."""


def _read_folder(folder: Path, split: str) -> str:
    """One split of a local folder, read through the `datasets` text builder (lines kept whole)."""
    import datasets

    path = folder / SPLIT_FILES[split]
    if not path.is_file():
        raise DataNotFoundError(f"{path} does not exist; the folder must hold {', '.join(SPLIT_FILES.values())}")
    datasets.disable_progress_bars()
    ds = datasets.load_dataset("text", data_files={split: str(path)}, split=split, keep_linebreaks=True)
    return "".join(ds["text"])


def _read_hub(split: str) -> str:
    import datasets

    name, config = HUB_DATASET
    hub_split = {"valid": "validation"}.get(split, split)
    ds = datasets.load_dataset(name, config, split=hub_split)
    return "".join(ds["text"])  # each row is one line of the release, newline included


def load_split(split: str, corpus: str = "wikitext-2") -> str:
    """The full text of one split ("train", "valid" or "test")."""
    if split not in SPLIT_FILES:
        raise ValueError(f"unknown split {split!r}: use one of {sorted(SPLIT_FILES)}")
    if corpus == PLACEHOLDER:
        raise ValueError("the placeholder corpus has no fixed split text; use load_corpus or placeholder_text")
    if corpus != "wikitext-2":
        folder = Path(corpus).expanduser()
        if not folder.is_dir():
            raise DataNotFoundError(f"corpus folder {folder} does not exist (a corpus is 'wikitext-2' or a folder "
                                    f"holding {', '.join(SPLIT_FILES.values())})")
        return _read_folder(folder, split)
    local = os.environ.get(DATA_ENV)
    if local:
        folder = Path(local).expanduser()
        if not folder.is_dir():
            raise DataNotFoundError(f"{DATA_ENV}={local} is not a folder. Point it at a copy of WikiText-2 "
                                    f"holding {', '.join(SPLIT_FILES.values())}, or unset it to load the hub dataset "
                                    f"{HUB_DATASET[0]} (config {HUB_DATASET[1]}).")
        if not (folder / SPLIT_FILES[split]).is_file():
            raise DataNotFoundError(f"{DATA_ENV}={local} has no {SPLIT_FILES[split]}. Point it at a copy of WikiText-2 "
                                    f"holding {', '.join(SPLIT_FILES.values())}, or unset it to load the hub dataset "
                                    f"{HUB_DATASET[0]} (config {HUB_DATASET[1]}).")
        return _read_folder(folder, split)
    try:
        return _read_hub(split)
    except Exception as exc:  # any hub failure (offline, blocked, missing) means: no data here
        raise DataNotFoundError(
            "WikiText-2 could not be loaded. Either set EASE_DATA_DIR to a folder holding train.txt, valid.txt "
            "and test.txt (the tokenized wikitext-2-v1 release), or allow access to the Hugging Face hub "
            f"dataset {HUB_DATASET[0]} (config {HUB_DATASET[1]}). Hub error: {exc}") from exc


def placeholder_text(split: str, chars: int) -> str:
    """The original code's stand-in text for `chars` characters of a split, exactly as it made it:
    its sentence repeated `chars // divisor` times (so 100,000 train characters give 99,990 and
    10,000 validation characters give 10,260)."""
    if split not in PLACEHOLDER_SENTENCES:
        raise ValueError(f"the placeholder corpus has splits {sorted(PLACEHOLDER_SENTENCES)}, not {split!r}")
    sentence, divisor = PLACEHOLDER_SENTENCES[split]
    if chars < divisor:
        raise ValueError(f"the placeholder {split} text needs at least {divisor} characters, got {chars}")
    return sentence * (chars // divisor)


@dataclass
class CharCorpus:
    """Character-level train and validation ids with their vocabulary."""

    vocab: list[str]
    train_ids: torch.Tensor
    val_ids: torch.Tensor

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)


def build_corpus(train_text: str, val_text: str, vocab_from: str = "train+valid") -> CharCorpus:
    """Encode texts as character ids. The vocabulary is sorted, so it is the same on every machine."""
    if not train_text or not val_text:
        raise ValueError("train and validation text must both be non-empty")
    if vocab_from == "train+valid":
        vocab = sorted(set(train_text) | set(val_text))
    elif vocab_from == "train":
        vocab = sorted(set(train_text) | {UNKNOWN_CHAR})
    else:
        raise ValueError(f"vocab_from must be 'train+valid' or 'train', got {vocab_from!r}")
    index = {ch: i for i, ch in enumerate(vocab)}
    unknown = index.get(UNKNOWN_CHAR)

    def encode(text: str) -> torch.Tensor:
        return torch.tensor([index.get(ch, unknown) for ch in text], dtype=torch.long)

    return CharCorpus(vocab, encode(train_text), encode(val_text))


def load_corpus(corpus: str = "wikitext-2", train_chars: int = 200_000, val_chars: int = 20_000,
                vocab_from: str = "train+valid") -> CharCorpus:
    """The first `train_chars` of the train split and the first `val_chars` of the validation split.

    For the "placeholder" corpus the sizes go through the original code's formula instead.
    """
    if corpus == PLACEHOLDER:
        return build_corpus(placeholder_text("train", train_chars), placeholder_text("valid", val_chars), vocab_from)
    train_text = load_split("train", corpus)[:train_chars]
    val_text = load_split("valid", corpus)[:val_chars]
    if len(train_text) < train_chars or len(val_text) < val_chars:
        raise ValueError(f"corpus {corpus!r} is shorter than asked: train {len(train_text)} < {train_chars} "
                         f"or valid {len(val_text)} < {val_chars} characters")
    return build_corpus(train_text, val_text, vocab_from)


def make_batches(ids: torch.Tensor, seq_len: int, batch_size: int, shuffle: bool = False,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping windows of `seq_len` with next-character targets, grouped into batches.

    Returns (inputs, targets), each of shape [n_batches, batch_size, seq_len]. Windows are taken
    in order; the last partial batch is dropped. `shuffle` permutes windows before batching.
    """
    n_windows = (len(ids) - 1) // seq_len
    n_batches = n_windows // batch_size
    if n_batches == 0:
        raise ValueError(f"{len(ids)} characters make no full batch of {batch_size} windows of {seq_len}")
    used = n_batches * batch_size * seq_len
    inputs = ids[:used].view(-1, seq_len)
    targets = ids[1:used + 1].view(-1, seq_len)
    if shuffle:
        order = torch.randperm(len(inputs), generator=generator)
        inputs, targets = inputs[order], targets[order]
    return inputs.view(n_batches, batch_size, seq_len), targets.view(n_batches, batch_size, seq_len)
