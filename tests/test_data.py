"""Corpus loading (local folders, EASE_DATA_DIR, the hub fallback), bad data files, provenance,
vocabulary and batching."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from ease.data import (DATA_ENV, HUB_DATASET, UNKNOWN_CHAR, DataError, DataNotFoundError, build_corpus,
                       check_data, data_provenance, load_corpus, load_split, make_batches, placeholder_text)

# The real WikiText-2 copy, wherever the environment points (CI sets it; so does the README's offline set-up).
REAL_DATA = Path(os.environ.get("EASE_DATA_DIR") or "/nonexistent").expanduser()

# Blank lines, a line of spaces, a leading space, non-ASCII and a trailing blank line, as in WikiText.
TEXTS = {
    "train": " \n = Título Ⅱ = \n \n naïve café — 東京 ☃ <unk> .\n\n\n   \nlast line\n\n",
    "valid": "valid: Ünïcödé ß 😀\nno newline at the end",
    "test": "\n",
}


def _write_corpus(folder: Path, texts: dict[str, str] = TEXTS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, text in texts.items():
        with open(folder / f"{split}.txt", "w", encoding="utf-8", newline="") as f:
            f.write(text)
    return folder


@pytest.fixture
def corpus_dir(tmp_path):
    return _write_corpus(tmp_path / "corpus")


# --- loading ------------------------------------------------------------------------------

@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_env_folder_round_trips_text_exactly(corpus_dir, monkeypatch, split):
    monkeypatch.setenv(DATA_ENV, str(corpus_dir))
    assert load_split(split) == TEXTS[split]


@pytest.mark.parametrize("split", ["train", "valid"])
def test_corpus_folder_round_trips_text_exactly(corpus_dir, monkeypatch, split):
    monkeypatch.delenv(DATA_ENV, raising=False)
    assert load_split(split, corpus=str(corpus_dir)) == TEXTS[split]


def test_corpus_folder_takes_precedence_over_env(corpus_dir, tmp_path, monkeypatch):
    other = _write_corpus(tmp_path / "other", {k: "other " + v for k, v in TEXTS.items()})
    monkeypatch.setenv(DATA_ENV, str(other))
    assert load_split("train", corpus=str(corpus_dir)) == TEXTS["train"]
    assert load_split("train") == "other " + TEXTS["train"]


def test_unknown_split():
    with pytest.raises(ValueError, match="unknown split 'validation'"):
        load_split("validation")


def test_load_corpus_takes_prefixes(corpus_dir):
    corpus = load_corpus(str(corpus_dir), train_chars=20, val_chars=10)
    decode = lambda ids: "".join(corpus.vocab[i] for i in ids.tolist())  # noqa: E731
    assert decode(corpus.train_ids) == TEXTS["train"][:20]
    assert decode(corpus.val_ids) == TEXTS["valid"][:10]


def test_load_corpus_too_short(corpus_dir):
    with pytest.raises(ValueError, match="shorter than asked"):
        load_corpus(str(corpus_dir), train_chars=10_000, val_chars=10)


@pytest.mark.parametrize("train_chars, val_chars, says, not_says", [
    # the train text of TEXTS is 63 characters (code points, not bytes), the valid text 40
    (10, 1000, "its valid split has 40 characters, 960 fewer than val_chars=1000", "train"),
    (1000, 10, "its train split has 63 characters, 937 fewer than train_chars=1000", "valid"),
    (64, 41, "its train split has 63 characters, 1 fewer than train_chars=64; its valid split has 40 characters, "
             "1 fewer than val_chars=41", None),
])
def test_too_short_names_the_short_split_and_by_how_much(corpus_dir, train_chars, val_chars, says, not_says):
    """Finding 6: "valid 1000 < 1000 characters" was printed for a corpus whose train split was short."""
    assert (len(TEXTS["train"]), len(TEXTS["valid"])) == (63, 40)
    with pytest.raises(DataError) as err:
        load_corpus(str(corpus_dir), train_chars=train_chars, val_chars=val_chars)
    message = str(err.value)
    assert says in message and str(corpus_dir) in message, message
    if not_says:
        assert f"its {not_says} split" not in message, message


# --- missing data -------------------------------------------------------------------------

def _assert_names_both_sources(message: str):
    assert DATA_ENV in message, message
    assert "hub" in message.lower(), message


def test_env_pointing_to_missing_folder(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    monkeypatch.setenv(DATA_ENV, str(missing))
    with pytest.raises(DataNotFoundError) as err:
        load_split("train")
    assert str(missing) in str(err.value)
    _assert_names_both_sources(str(err.value))


def test_env_folder_without_train_txt(tmp_path, monkeypatch):
    folder = _write_corpus(tmp_path / "partial", {"valid": "v\n", "test": "t\n"})
    monkeypatch.setenv(DATA_ENV, str(folder))
    with pytest.raises(DataNotFoundError) as err:
        load_split("train")
    assert "train.txt" in str(err.value)
    _assert_names_both_sources(str(err.value))


def test_corpus_folder_missing(tmp_path):
    with pytest.raises(DataNotFoundError, match="corpus folder .*nowhere does not exist"):
        load_split("train", corpus=str(tmp_path / "nowhere"))


def test_corpus_folder_without_valid_txt(tmp_path):
    folder = _write_corpus(tmp_path / "partial", {"train": "abc\n"})
    with pytest.raises(DataNotFoundError, match="valid.txt"):
        load_corpus(str(folder), train_chars=2, val_chars=1)


def test_data_not_found_is_a_file_not_found_error():
    assert issubclass(DataNotFoundError, FileNotFoundError)
    assert issubclass(DataNotFoundError, DataError) and issubclass(DataError, ValueError)


# --- bad data files: one line naming the file ---------------------------------------------------------

@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_empty_split_file(corpus_dir, split):
    """Finding 6: an empty train.txt gave DatasetGenerationError naming no file."""
    path = corpus_dir / f"{split}.txt"
    path.write_bytes(b"")
    with pytest.raises(DataError) as err:
        load_split(split, str(corpus_dir))
    assert str(err.value) == f"{path} is empty: each split file needs text"
    with pytest.raises(DataError, match="is empty"):
        check_data(str(corpus_dir))


@pytest.mark.parametrize("raw, offset, byte", [
    (b"abc\n\xff rest\n", 4, "0xff"),              # a byte that starts no UTF-8 character
    ("naïve\n".encode() + b"\xc3(", 7, "0xc3"),     # "ï" takes 2 bytes, so 6 characters are 7 bytes
    (b"ab" + "東".encode()[:2], 2, "0xe6"),          # cut in the middle of a 3-byte character
    ("x".encode("utf-16"), 0, "0xff"),              # another encoding's byte-order mark
])
def test_undecodable_split_file_says_where(corpus_dir, raw, offset, byte):
    path = corpus_dir / "train.txt"
    path.write_bytes(raw)
    for read in (lambda: load_split("train", str(corpus_dir)), lambda: check_data(str(corpus_dir)),
                 lambda: load_corpus(str(corpus_dir), 1, 1)):
        with pytest.raises(DataError) as err:
            read()
        message = str(err.value)
        assert message.startswith(f"{path} is not UTF-8 text: byte {byte} at byte offset {offset} "), message
        assert "\n" not in message


def test_an_edited_file_is_read_anew_even_with_its_time_restored(corpus_dir):
    """Finding 2: the `datasets` text builder served the old text of a file edited with its mtime restored."""
    path = corpus_dir / "train.txt"
    assert load_split("train", str(corpus_dir)) == TEXTS["train"]
    before = os.stat(path)
    edited = TEXTS["train"].replace("café", "cafe").replace("naïve", "naive")  # other text, other size
    path.write_bytes(edited.encode())
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(path).st_mtime_ns == before.st_mtime_ns
    assert load_split("train", str(corpus_dir)) == edited
    same_size = TEXTS["train"].replace("Título", "Titlé!")  # and an edit that keeps the byte count
    assert len(same_size.encode()) == len(TEXTS["train"].encode())
    path.write_bytes(same_size.encode())
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert load_split("train", str(corpus_dir)) == same_size


def test_crlf_and_a_byte_order_mark_are_kept_as_they_are(corpus_dir):
    path = corpus_dir / "valid.txt"
    path.write_bytes(b"\xef\xbb\xbfline one\r\nline two\r\n")
    assert load_split("valid", str(corpus_dir)) == "\ufeffline one\r\nline two\r\n"


# --- provenance -------------------------------------------------------------------------------------

def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fingerprint(hashes: dict) -> str:
    return hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()[:16]


def test_provenance_of_a_local_folder(corpus_dir, monkeypatch):
    monkeypatch.setenv(DATA_ENV, str(corpus_dir))
    # the hashes of the exact prefixes used, from the files' bytes (the first 20 and 10 characters)
    train_bytes, valid_bytes = TEXTS["train"][:20].encode(), TEXTS["valid"][:10].encode()
    assert train_bytes == (corpus_dir / "train.txt").read_bytes()[:len(train_bytes)]
    hashes = {"train": _sha(train_bytes), "valid": _sha(valid_bytes),
              "test": _sha((corpus_dir / "test.txt").read_bytes())}
    expected = {"source": "local", "location": str(corpus_dir.resolve()), "sha256": hashes,
                "fingerprint": _fingerprint(hashes)}
    assert data_provenance("wikitext-2", 20, 10) == expected
    assert data_provenance(str(corpus_dir), 20, 10) == expected
    assert load_corpus(str(corpus_dir), 20, 10).provenance == expected
    other = data_provenance(str(corpus_dir), 21, 10)
    assert other["sha256"]["valid"] == hashes["valid"] and other["fingerprint"] != expected["fingerprint"]


def test_provenance_without_a_test_split(corpus_dir):
    (corpus_dir / "test.txt").unlink()
    provenance = data_provenance(str(corpus_dir), 5, 5)
    assert provenance["sha256"]["test"] is None
    assert provenance["fingerprint"] == _fingerprint(provenance["sha256"])


def test_provenance_of_the_placeholder(monkeypatch):
    monkeypatch.delenv(DATA_ENV, raising=False)
    train = b"The quick brown fox jumps over the lazy dog. " * 2222
    valid = b"A quick brown dog runs in the park. " * 285
    hashes = {"train": _sha(train), "valid": _sha(valid), "test": None}
    assert data_provenance("placeholder", 100_000, 10_000) == {
        "source": "placeholder", "location": "ease.data.placeholder_text", "sha256": hashes,
        "fingerprint": _fingerprint(hashes)}


class FakeHubSplit:
    """What `datasets.load_dataset` returns, as far as ease reads it."""

    def __init__(self, lines, cache_files=(), fingerprint=None):
        self.lines, self.cache_files, self._fingerprint = lines, list(cache_files), fingerprint

    def __getitem__(self, column):
        assert column == "text"
        return self.lines


HUB_TEXT = {"train": [" = A = \n", " train line \n"], "validation": [" valid \n"], "test": [" test \n"]}


@pytest.mark.parametrize("cache_files, fingerprint, revision", [
    ([{"filename": "/cache/Salesforce___wikitext/wikitext-2-v1/0.0.0/" + "b08601e04326c79dfdd32d625aee71d232d685c3"
                   + "/wikitext-train.arrow"}], "f1", "b08601e04326c79dfdd32d625aee71d232d685c3"),
    ([], "0123abcd", "0123abcd"),   # no commit in the cache paths: the dataset's own fingerprint
    ([], None, "unknown"),
])
def test_provenance_of_the_hub(monkeypatch, cache_files, fingerprint, revision):
    import datasets

    def fake_hub(name, config, split):
        assert (name, config) == HUB_DATASET
        return FakeHubSplit(HUB_TEXT[split], cache_files, fingerprint)

    monkeypatch.delenv(DATA_ENV, raising=False)
    monkeypatch.setattr(datasets, "load_dataset", fake_hub)
    provenance = data_provenance("wikitext-2", 10, 5)
    hashes = {"train": _sha(b" = A = \n t"), "valid": _sha(b" vali"), "test": _sha(b" test \n")}
    assert provenance == {"source": "hub", "location": f"Salesforce/wikitext wikitext-2-v1@{revision}",
                          "sha256": hashes, "fingerprint": _fingerprint(hashes)}


def test_check_data(corpus_dir):
    report = check_data(str(corpus_dir))
    hashes = {split: _sha((corpus_dir / f"{split}.txt").read_bytes()) for split in ("train", "valid", "test")}
    assert report == {"source": "local", "location": str(corpus_dir.resolve()), "sha256": hashes,
                      "fingerprint": _fingerprint(hashes), "chars": {k: len(v) for k, v in TEXTS.items()}}
    assert check_data("placeholder")["fingerprint"] is None


def test_check_data_missing(tmp_path, monkeypatch):
    folder = _write_corpus(tmp_path / "partial", {"train": "t\n", "test": "x\n"})
    with pytest.raises(DataNotFoundError, match=f"{folder / 'valid.txt'} does not exist"):
        check_data(str(folder))
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(DataNotFoundError, match=f"{DATA_ENV}=.*nowhere is not a folder"):
        check_data()


def test_hub_unreachable(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network in this test")

    monkeypatch.delenv(DATA_ENV, raising=False)
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataNotFoundError) as err:
        load_split("valid")
    message = str(err.value)
    assert DATA_ENV in message and HUB_DATASET[0] in message and HUB_DATASET[1] in message
    assert "no network in this test" in message  # the underlying cause is shown


def test_hub_is_asked_for_the_validation_split(monkeypatch):
    asked = {}

    def fake_hub(name, config, split):
        asked.update(name=name, config=config, split=split)
        return {"text": [" = A = \n", " \n"]}

    import datasets
    monkeypatch.delenv(DATA_ENV, raising=False)
    monkeypatch.setattr(datasets, "load_dataset", fake_hub)
    assert load_split("valid") == " = A = \n \n"
    assert asked == {"name": "Salesforce/wikitext", "config": "wikitext-2-v1", "split": "validation"}


@pytest.mark.ci_required
@pytest.mark.skipif(not (REAL_DATA / "train.txt").is_file(), reason="needs the real WikiText-2 copy in EASE_DATA_DIR")
def test_real_wikitext2_matches_the_file(monkeypatch):
    monkeypatch.setenv(DATA_ENV, str(REAL_DATA))
    for split in ("train", "valid"):
        with open(REAL_DATA / f"{split}.txt", encoding="utf-8", newline="") as f:
            direct = f.read()
        loaded = load_split(split)
        assert loaded[:200_000] == direct[:200_000]
        assert len(loaded) == len(direct)
    assert load_split("train").startswith(" \n = Valkyria Chronicles III = \n")


@pytest.mark.skipif(not (REAL_DATA / "train.txt").is_file(), reason="needs the real WikiText-2 copy in EASE_DATA_DIR")
def test_real_wikitext2_provenance_is_the_files_hashes(monkeypatch):
    monkeypatch.setenv(DATA_ENV, str(REAL_DATA))
    whole = check_data()
    for split in ("train", "valid", "test"):
        assert whole["sha256"][split] == _sha((REAL_DATA / f"{split}.txt").read_bytes())
    with open(REAL_DATA / "train.txt", encoding="utf-8", newline="") as f:
        train_prefix = f.read(200_000)
    assert data_provenance("wikitext-2", 200_000, 20_000)["sha256"]["train"] == _sha(train_prefix.encode())


# --- vocabulary ---------------------------------------------------------------------------

def test_vocab_from_train_and_valid():
    corpus = build_corpus("banana", "cab!")
    assert corpus.vocab == ["!", "a", "b", "c", "n"]
    assert corpus.vocab_size == 5
    assert corpus.train_ids.tolist() == [2, 1, 4, 1, 4, 1]
    assert corpus.val_ids.tolist() == [3, 1, 2, 0]
    assert corpus.train_ids.dtype == torch.long


def test_vocab_from_train_maps_unseen_to_unknown():
    corpus = build_corpus("banana", "cab!", vocab_from="train")
    assert set(corpus.vocab) == {"a", "b", "n", UNKNOWN_CHAR}
    decoded = "".join(corpus.vocab[i] for i in corpus.val_ids.tolist())
    assert decoded == f"{UNKNOWN_CHAR}ab{UNKNOWN_CHAR}"
    assert "".join(corpus.vocab[i] for i in corpus.train_ids.tolist()) == "banana"


def test_vocab_is_sorted_and_independent_of_order():
    a = build_corpus("zyx", "abc")
    b = build_corpus("abc", "zyx")
    assert a.vocab == b.vocab == sorted("abcxyz")


def test_vocab_keeps_non_ascii_and_whitespace(corpus_dir):
    corpus = load_corpus(str(corpus_dir), train_chars=len(TEXTS["train"]), val_chars=len(TEXTS["valid"]))
    assert set(corpus.vocab) == set(TEXTS["train"]) | set(TEXTS["valid"])
    assert {"\n", " ", "東", "😀", "ß"} <= set(corpus.vocab)


def test_build_corpus_bad_input():
    with pytest.raises(ValueError, match="non-empty"):
        build_corpus("", "abc")
    with pytest.raises(ValueError, match="vocab_from must be"):
        build_corpus("abc", "abc", vocab_from="valid")


# --- batching -----------------------------------------------------------------------------

def test_make_batches_shapes_and_order():
    ids = torch.arange(100)
    x, y = make_batches(ids, seq_len=4, batch_size=3)
    # (100 - 1) // 4 = 24 windows -> 8 full batches of 3
    assert x.shape == y.shape == (8, 3, 4)
    # windows are consecutive, non-overlapping slices taken in order
    assert x.reshape(-1).tolist() == list(range(96))
    assert torch.equal(y, x + 1)


def test_make_batches_drops_the_last_partial_batch():
    ids = torch.arange(50)
    x, y = make_batches(ids, seq_len=4, batch_size=5)
    # (50 - 1) // 4 = 12 windows: 2 batches of 5, the last 2 windows dropped
    assert x.shape == (2, 5, 4)
    assert x.max().item() == 39 and y.max().item() == 40


def test_make_batches_uses_the_last_character_as_a_target():
    ids = torch.arange(9)  # exactly 2 windows of 4 plus one target character
    x, y = make_batches(ids, seq_len=4, batch_size=2)
    assert x.reshape(-1).tolist() == list(range(8))
    assert y.reshape(-1).tolist() == list(range(1, 9))


def test_targets_are_next_characters_of_real_ids():
    corpus = build_corpus("the cat sat on the mat. " * 10, "x")
    x, y = make_batches(corpus.train_ids, seq_len=5, batch_size=2)
    flat_x, flat_y = x.reshape(-1, 5), y.reshape(-1, 5)
    for w in range(len(flat_x)):
        start = w * 5
        assert flat_x[w].tolist() == corpus.train_ids[start:start + 5].tolist()
        assert flat_y[w].tolist() == corpus.train_ids[start + 1:start + 6].tolist()


def test_make_batches_too_little_data():
    with pytest.raises(ValueError, match="make no full batch"):
        make_batches(torch.arange(10), seq_len=4, batch_size=3)


def test_shuffle_permutes_whole_windows():
    ids = torch.arange(201)
    x0, _ = make_batches(ids, seq_len=5, batch_size=4)
    x, y = make_batches(ids, seq_len=5, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))
    assert x.shape == x0.shape
    windows, plain = x.reshape(-1, 5), x0.reshape(-1, 5)
    assert not torch.equal(windows, plain)  # the order changed
    assert sorted(map(tuple, windows.tolist())) == sorted(map(tuple, plain.tolist()))  # same windows
    assert torch.equal(y, x + 1)  # targets moved with their windows
    assert torch.all(windows[:, 0] % 5 == 0)  # each window is still a whole aligned slice


def test_shuffle_is_reproducible_with_a_seeded_generator():
    ids = torch.arange(201)
    a = make_batches(ids, 5, 4, shuffle=True, generator=torch.Generator().manual_seed(3))[0]
    b = make_batches(ids, 5, 4, shuffle=True, generator=torch.Generator().manual_seed(3))[0]
    c = make_batches(ids, 5, 4, shuffle=True, generator=torch.Generator().manual_seed(4))[0]
    assert torch.equal(a, b) and not torch.equal(a, c)



# --- the original code's placeholder text (selectable by name only) ---------------------------------
def test_placeholder_text_is_the_original_formula():
    train = placeholder_text("train", 100_000)
    valid = placeholder_text("valid", 10_000)
    # the original repeated each sentence chars // 45 and chars // 35 times
    assert train == "The quick brown fox jumps over the lazy dog. " * 2222
    assert valid == "A quick brown dog runs in the park. " * 285
    assert (len(train), len(valid)) == (99_990, 10_260)


def test_placeholder_corpus_by_name(monkeypatch):
    monkeypatch.delenv("EASE_DATA_DIR", raising=False)  # never read: the text is built, not loaded
    corpus = load_corpus("placeholder", 100_000, 10_000)
    assert len(corpus.train_ids) == 99_990 and len(corpus.val_ids) == 10_260
    text = "".join(corpus.vocab[i] for i in corpus.train_ids[:45].tolist())
    assert text == "The quick brown fox jumps over the lazy dog. "
    # both sentences' characters: 26 letters (every one in the pangram) plus A, T, space and full stop
    assert corpus.vocab_size == 30


def test_placeholder_is_never_a_fallback(tmp_path, monkeypatch):
    monkeypatch.setenv("EASE_DATA_DIR", str(tmp_path / "missing"))
    with pytest.raises(DataNotFoundError):
        load_corpus("wikitext-2", 1000, 100)
    with pytest.raises(ValueError, match="placeholder"):
        load_split("train", "placeholder")
    with pytest.raises(ValueError, match="at least 45"):
        placeholder_text("train", 10)


# --- held-out test text -------------------------------------------------------------------------

def test_test_text_is_read_when_asked_and_unknown_characters_are_counted(tmp_path):
    folder = _write_corpus(tmp_path / "c", {"train": "abcabc", "valid": "cab", "test": "abzcaé"})
    assert load_corpus(str(folder), 6, 3).test_ids is None  # not asked for: not read
    corpus = load_corpus(str(folder), 6, 3, test_chars=-1)
    # the train+valid vocabulary has no slot for 'z' or 'é': they are left out, and counted
    assert corpus.test_unknown_chars == 2
    assert [corpus.vocab[i] for i in corpus.test_ids] == list("abca")
    assert [corpus.vocab[i] for i in load_corpus(str(folder), 6, 3, test_chars=3).test_ids] == list("ab")
    # a train-only vocabulary has the unknown character: they become it
    train_only = load_corpus(str(folder), 6, 3, "train", test_chars=-1)
    assert "".join(train_only.vocab[i] for i in train_only.test_ids) == "ab\ufffdca\ufffd"
    assert train_only.test_unknown_chars == 2


def test_test_text_asked_but_missing_or_short(tmp_path):
    folder = _write_corpus(tmp_path / "c", {"train": "abcabc", "valid": "cab", "test": "abc"})
    with pytest.raises(DataError, match="test split .* has 3 characters, 7 fewer than test_chars=10"):
        load_corpus(str(folder), 6, 3, test_chars=10)
    with pytest.raises(DataError, match="no test split"):
        load_corpus("placeholder", 100_000, 10_000, test_chars=-1)


def test_calibration_text_follows_the_validation_text(tmp_path):
    from ease.data import calibration_text

    folder = _write_corpus(tmp_path / "c", {"train": "abcabc", "valid": "0123456789", "test": "ab"})
    assert calibration_text(str(folder), 3, 4) == "3456"
    with pytest.raises(DataError, match="10 characters: too few for val_chars=3 plus calibration_chars=8"):
        calibration_text(str(folder), 3, 8)
    with pytest.raises(DataError, match="placeholder"):
        calibration_text("placeholder", 3, 4)
