"""WikiText-2 at the character level: read by content, with the provenance of every text a run uses.

Source order: the folder named by the environment variable EASE_DATA_DIR (holding train.txt,
valid.txt and test.txt, the tokenized "wikitext-2-v1" release), else the Hugging Face hub
dataset Salesforce/wikitext, config wikitext-2-v1 (the same text), through the `datasets`
library. A corpus may also be any folder with train.txt and valid.txt. Missing data is an
error; no text is ever made up.

Local files are read as bytes and decoded as strict UTF-8, every time: never through the
`datasets` text builder, whose cache is keyed on a file's path and modification time and so can
serve the old text of a file edited with its time restored. A missing, empty or undecodable file
is a `DataError` (a ValueError) whose one-line message names the file; a missing one is also a
`DataNotFoundError` (a FileNotFoundError).

Provenance (`data_provenance`) says where a run's text came from and what it was: the SHA-256 of
the exact train and validation text used (the prefixes), of the whole test split, and a short
`fingerprint` over the three. The fingerprint is part of a run's identity (see ease.records).
`check_data` is the cheap check before a grid starts: present, decodable, non-empty.

The one exception to "no text made up" is asked for by name: corpus "placeholder" is the text
the original experiment code trained on, without a warning, when its data files were missing
(see `placeholder_text`). It exists to test whether the published numbers came from it; it is
never a fallback.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
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
SOURCES = ("local", "hub", "placeholder")


class DataError(ValueError):
    """The corpus cannot be used: missing, empty, not UTF-8, or shorter than asked. One line, naming the file."""


class DataNotFoundError(DataError, FileNotFoundError):
    """The corpus could not be found in any of the places it may come from."""


def _folder_hint() -> str:
    return (f"Point it at a copy of WikiText-2 holding {', '.join(SPLIT_FILES.values())}, or unset it to load "
            f"the hub dataset {HUB_DATASET[0]} (config {HUB_DATASET[1]}).")


def _local_folder(corpus: str) -> Path | None:
    """The folder a corpus is read from, or None for the hub (checked to exist)."""
    if corpus == PLACEHOLDER:
        raise ValueError("the placeholder corpus has no fixed split text; use load_corpus or placeholder_text")
    if corpus != "wikitext-2":
        folder = Path(corpus).expanduser()
        if not folder.is_dir():
            raise DataNotFoundError(f"corpus folder {folder} does not exist (a corpus is 'wikitext-2' or a folder "
                                    f"holding {', '.join(SPLIT_FILES.values())})")
        return folder
    local = os.environ.get(DATA_ENV)
    if not local:
        return None
    folder = Path(local).expanduser()
    if not folder.is_dir():
        raise DataNotFoundError(f"{DATA_ENV}={local} is not a folder. {_folder_hint()}")
    return folder


def _read_file(folder: Path, split: str, corpus: str) -> str:
    """One split of a local folder: its bytes as strict UTF-8, exactly (line ends included)."""
    path = folder / SPLIT_FILES[split]
    if not path.is_file():
        if corpus == "wikitext-2":
            raise DataNotFoundError(f"{DATA_ENV}={os.environ.get(DATA_ENV)} has no {SPLIT_FILES[split]}. "
                                    f"{_folder_hint()}")
        raise DataNotFoundError(f"{path} does not exist; the folder must hold {', '.join(SPLIT_FILES.values())}")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path} cannot be read: {exc.strerror or exc}") from exc
    if not raw:
        raise DataError(f"{path} is empty: each split file needs text")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text: byte 0x{raw[exc.start]:02x} at byte offset {exc.start} "
                        f"cannot be decoded ({exc.reason})") from None


def _hub_revision(ds) -> str:
    """Best effort: the hub commit `datasets` resolved (a 40-hex folder of its cache paths), else the
    dataset's own fingerprint, else "unknown"."""
    for entry in getattr(ds, "cache_files", None) or []:
        for part in Path(str(entry.get("filename", ""))).parts:
            if re.fullmatch(r"[0-9a-f]{40}", part):
                return part
    return str(getattr(ds, "_fingerprint", None) or "unknown")


def _read_hub(split: str) -> tuple[str, str]:
    """One split of the hub dataset and the revision it came from."""
    import datasets

    name, config = HUB_DATASET
    hub_split = {"valid": "validation"}.get(split, split)
    try:
        ds = datasets.load_dataset(name, config, split=hub_split)
    except Exception as exc:  # any hub failure (offline, blocked, missing) means: no data here
        raise DataNotFoundError(
            "WikiText-2 could not be loaded. Either set EASE_DATA_DIR to a folder holding train.txt, valid.txt "
            "and test.txt (the tokenized wikitext-2-v1 release), or allow access to the Hugging Face hub "
            f"dataset {HUB_DATASET[0]} (config {HUB_DATASET[1]}). Hub error: {exc}") from exc
    return "".join(ds["text"]), _hub_revision(ds)  # each row is one line of the release, newline included


def load_split(split: str, corpus: str = "wikitext-2") -> str:
    """The full text of one split ("train", "valid" or "test")."""
    if split not in SPLIT_FILES:
        raise ValueError(f"unknown split {split!r}: use one of {sorted(SPLIT_FILES)}")
    folder = _local_folder(corpus)
    return _read_file(folder, split, corpus) if folder is not None else _read_hub(split)[0]


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
    """Character-level train and validation ids with their vocabulary (and, from `load_corpus`, the
    provenance of the text they encode: see `data_provenance`)."""

    vocab: list[str]
    train_ids: torch.Tensor
    val_ids: torch.Tensor
    provenance: dict | None = None
    test_ids: torch.Tensor | None = None  # the held-out test text, when asked for (see `encode_test`)
    test_unknown_chars: int = 0  # test characters outside the vocabulary (see `encode_test`)

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


def encode_held_out(corpus: CharCorpus, text: str) -> tuple[torch.Tensor, int]:
    """Held-out text (test or calibration) as ids of the corpus's vocabulary, and how many of its
    characters the vocabulary lacks.

    Such a character (WikiText-2's test split has 112 of 1,255,018 outside the default run's
    vocabulary, e.g. 'é', '×', '→') cannot be predicted by a model without that output: it becomes the
    unknown character where the vocabulary has one (vocab_from "train"), and is left out of the text
    otherwise (its neighbours become neighbours). Records report the count.
    """
    index = {ch: i for i, ch in enumerate(corpus.vocab)}
    unknown = index.get(UNKNOWN_CHAR)
    ids = [index.get(ch, unknown) for ch in text]
    return torch.tensor([i for i in ids if i is not None], dtype=torch.long), sum(ch not in index for ch in text)


def encode_test(corpus: CharCorpus, test_text: str) -> None:
    """Encode test text into `corpus.test_ids` (and the count of unknown characters into
    `corpus.test_unknown_chars`), see `encode_held_out`."""
    corpus.test_ids, corpus.test_unknown_chars = encode_held_out(corpus, test_text)


def calibration_text(corpus: str, val_chars: int, calibration_chars: int) -> str:
    """The `calibration_chars` characters of the validation split that follow the first `val_chars`
    (the text that chose the epoch): held out from training, from epoch choice and from the test split."""
    if corpus == PLACEHOLDER:
        raise DataError("the placeholder corpus has no validation text beyond its runs' own to calibrate on")
    valid = _whole_splits(corpus).valid
    if val_chars + calibration_chars > len(valid):
        raise DataError(f"the validation split of {corpus!r} has {len(valid)} characters: too few for "
                        f"val_chars={val_chars} plus calibration_chars={calibration_chars}")
    return valid[val_chars:val_chars + calibration_chars]


# --- the text a run uses, and its provenance --------------------------------------------------
PLACEHOLDER_LOCATION = "ease.data.placeholder_text"


def sha256_text(text: str | None) -> str | None:
    """SHA-256 of a text's UTF-8 bytes (for a local split read whole: the file's own SHA-256)."""
    return None if text is None else hashlib.sha256(text.encode("utf-8")).hexdigest()


def fingerprint(sha256: dict) -> str:
    """A short identity of a text triple: the first 16 hex digits of the SHA-256 of its split hashes
    as canonical JSON (`json.dumps(sha256, sort_keys=True)`, a missing test split as null)."""
    return hashlib.sha256(json.dumps(sha256, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class CorpusText:
    """Texts and where they came from. `test` is None where the corpus has no test split (the
    placeholder, or a corpus folder without test.txt): runs never use it, it is recorded to say which
    release the data is."""

    train: str
    valid: str
    test: str | None
    source: str  # one of SOURCES
    location: str  # the folder, "Salesforce/wikitext wikitext-2-v1@<revision>", or PLACEHOLDER_LOCATION

    def provenance(self) -> dict:
        hashes = {"train": sha256_text(self.train), "valid": sha256_text(self.valid), "test": sha256_text(self.test)}
        return {"source": self.source, "location": self.location, "sha256": hashes, "fingerprint": fingerprint(hashes)}


def _whole_splits(corpus: str) -> CorpusText:
    """Every split of a (non-placeholder) corpus, whole."""
    folder = _local_folder(corpus)
    if folder is None:
        (train, revision), (valid, _), (test, _) = (_read_hub(s) for s in ("train", "valid", "test"))
        name, config = HUB_DATASET
        return CorpusText(train, valid, test, "hub", f"{name} {config}@{revision}")
    test = _read_file(folder, "test", corpus) if (folder / SPLIT_FILES["test"]).is_file() else None
    return CorpusText(_read_file(folder, "train", corpus), _read_file(folder, "valid", corpus), test, "local",
                      str(folder.resolve()))


def corpus_text(corpus: str = "wikitext-2", train_chars: int = 200_000, val_chars: int = 20_000) -> CorpusText:
    """The exact text a run of these sizes trains and validates on: the first `train_chars` of the train
    split and the first `val_chars` of the validation split (read once, so text and provenance agree).

    For the "placeholder" corpus the sizes go through the original code's formula instead.
    """
    if corpus == PLACEHOLDER:
        return CorpusText(placeholder_text("train", train_chars), placeholder_text("valid", val_chars), None,
                          "placeholder", PLACEHOLDER_LOCATION)
    whole = _whole_splits(corpus)
    short = [f"its {split} split has {len(text)} characters, {wanted - len(text)} fewer than {name}={wanted}"
             for split, text, name, wanted in (("train", whole.train, "train_chars", train_chars),
                                               ("valid", whole.valid, "val_chars", val_chars))
             if len(text) < wanted]
    if short:
        where = whole.location if corpus != "wikitext-2" else f"'wikitext-2' ({whole.location})"
        raise DataError(f"corpus {where} is shorter than asked: {'; '.join(short)}")
    return CorpusText(whole.train[:train_chars], whole.valid[:val_chars], whole.test, whole.source, whole.location)


def data_provenance(corpus: str = "wikitext-2", train_chars: int = 200_000, val_chars: int = 20_000) -> dict:
    """Where a run's text comes from and what it is, as records keep it::

        {"source": "local" | "hub" | "placeholder",
         "location": <folder> | "Salesforce/wikitext wikitext-2-v1@<revision>" | "ease.data.placeholder_text",
         "sha256": {"train": <of the train text used>, "valid": <of the validation text used>,
                    "test": <of the whole test split, or None>},
         "fingerprint": <16 hex digits over the three, see `fingerprint`>}

    Raises DataError (one line, naming the file) when the data is missing, empty, undecodable or short.
    """
    return corpus_text(corpus, train_chars, val_chars).provenance()


def check_data(corpus: str = "wikitext-2") -> dict:
    """The check before a grid starts (stable interface): every split of `corpus` present, non-empty
    and UTF-8 (the test split only if the corpus has one). Returns the whole splits' description::

        {"source", "location", "chars": {"train": n, "valid": n, "test": n | None},
         "sha256": {split: hash of the whole split | None}, "fingerprint": 16 hex digits | None}

    This fingerprint is of the whole splits; a run's record holds that of the prefixes it used
    (`data_provenance`). The placeholder corpus needs no data: its entries are None. Raises DataError
    (DataNotFoundError when missing) with a one-line message naming the file.
    """
    if corpus == PLACEHOLDER:
        none = dict.fromkeys(SPLIT_FILES)
        return {"source": "placeholder", "location": PLACEHOLDER_LOCATION, "chars": none, "sha256": dict(none),
                "fingerprint": None}
    whole = _whole_splits(corpus)
    texts = {"train": whole.train, "valid": whole.valid, "test": whole.test}
    return {**whole.provenance(), "chars": {k: None if v is None else len(v) for k, v in texts.items()}}


def load_corpus(corpus: str = "wikitext-2", train_chars: int = 200_000, val_chars: int = 20_000,
                vocab_from: str = "train+valid", test_chars: int = 0) -> CharCorpus:
    """The first `train_chars` of the train split and the first `val_chars` of the validation split,
    encoded, with the text's provenance (`data_provenance`) in `provenance`; with `test_chars` also the
    first `test_chars` of the test split (-1: all of it) in `test_ids` (see `encode_test`).

    For the "placeholder" corpus the sizes go through the original code's formula instead; it has no
    test split.
    """
    text = corpus_text(corpus, train_chars, val_chars)
    corpus_ids = build_corpus(text.train, text.valid, vocab_from)
    corpus_ids.provenance = text.provenance()
    if test_chars:
        if text.test is None:
            raise DataError(f"corpus {corpus!r} has no test split (test.txt), but test_chars={test_chars} asks for it")
        if test_chars > len(text.test):
            raise DataError(f"the test split of {corpus!r} has {len(text.test)} characters, "
                            f"{test_chars - len(text.test)} fewer than test_chars={test_chars}")
        encode_test(corpus_ids, text.test if test_chars == -1 else text.test[:test_chars])
    return corpus_ids


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
