"""Raw corpora of the paper's three tasks, read from local files with the standard library.

Data directory resolution (docs/design.md §6, `train --data-dir`): the explicit argument, else the
`COLLAPIPE_DATA` environment variable, else the repository's own `data/` folder, found relative
to this package, so any working directory works. Every file is checked before it is read; a
missing one raises a `ValidationError` that names it, so a run never starts on half a corpus.

Layout expected under the data directory (provenance and licences: data/README.md):
  multi30k/{train,val,test_2016_flickr}.{de,en}.gz   one sentence per line, line i ↔ line i
  chinese_ner/example_{test,dev}.txt                 "char TAG" per line, blank line between sentences
  toutiao/toutiao_subset.txt                         "title_!_label" per line, label 0..14
"""

from __future__ import annotations

import gzip
import os
import pathlib
import zlib

import numpy as np

from collapipe_jax.errors import ValidationError

DATA_ENV = "COLLAPIPE_DATA"
# <repository>/data: collapipe_jax/tasks/data.py → parents[2] is the repository root
REPO_DATA_DIR = pathlib.Path(__file__).resolve().parents[2] / "data"

MULTI30K_SPLITS = {"train": "train", "val": "val", "test": "test_2016_flickr"}
# The NER training file of the original repository is not shipped; data/README.md: train on
# example_test.txt, evaluate on example_dev.txt.
NER_FILES = {"train": "example_test.txt", "test": "example_dev.txt"}
NER_TAGS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG")  # BIO over the corpus's three types
TOUTIAO_FILE = "toutiao_subset.txt"
TOUTIAO_N_CLASSES = 15
TOUTIAO_FRACTIONS = (0.8, 0.1, 0.1)  # train / val / test of a seeded permutation


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """--data-dir, else $COLLAPIPE_DATA, else the repository's data/; must be an existing directory."""
    chosen = data_dir or os.environ.get(DATA_ENV) or REPO_DATA_DIR
    path = pathlib.Path(chosen).expanduser()
    if not path.is_dir():
        raise ValidationError(
            "data_dir", f"must be an existing directory (point at the data with --data-dir DIR or ${DATA_ENV}=DIR)", str(path)
        )
    return path.resolve()


def require_file(path: pathlib.Path) -> pathlib.Path:
    """The path itself if it is a readable file, else a ValidationError naming it."""
    if not path.is_file():
        raise ValidationError("data file", f"missing data file {path}", None)
    return path


def read_text(path: pathlib.Path) -> str:
    """The whole UTF-8 text of a data file (gzip when it ends in .gz); every way a file can be
    broken (unreadable, not gzip, cut short, not UTF-8, empty) is one ValidationError naming it."""
    require_file(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            text = f.read()
    except gzip.BadGzipFile:
        raise ValidationError("data file", f"{path} is not a gzip file") from None
    except (EOFError, zlib.error) as err:
        raise ValidationError("data file", f"{path} is a damaged or truncated gzip file ({err})") from None
    except UnicodeDecodeError as err:
        raise ValidationError("data file", f"{path} is not UTF-8 text (byte {err.start}: {err.reason})") from None
    except OSError as err:
        raise ValidationError("data file", f"{path} cannot be read ({err.strerror or err})") from None
    if not text.strip():
        raise ValidationError("data file", f"{path} is empty")
    return text


def read_lines(path: pathlib.Path, *, by_paragraph: bool = False) -> list[str]:
    """Lines (or blank-line separated paragraphs) of a local UTF-8 text file, gzip or plain.

    Universal newlines; a line loses its '\\n'; paragraphs are split on blank lines and empty
    ones dropped. Plain reads: nothing is cached or locked outside the data directory.
    """
    text = read_text(path)
    if by_paragraph:
        return [p for p in text.split("\n\n") if p]
    lines = text.split("\n")  # not str.splitlines: that also splits at \x1c, \u2028 and others
    if lines[-1] == "":  # the final newline ends the last line and starts none
        lines.pop()
    return lines


def _take(items: list, max_examples: int | None) -> list:
    if max_examples is None:
        return items
    if max_examples < 1:
        raise ValidationError("max_examples", "must be a positive integer or None", max_examples)
    return items[:max_examples]


def load_multi30k(data_dir: pathlib.Path, split: str, max_examples: int | None = None) -> list[tuple[str, str]]:
    """(German, English) sentence pairs of a Multi30K task-1 split ('train' | 'val' | 'test')."""
    if split not in MULTI30K_SPLITS:
        raise ValidationError("split", f"must be one of {sorted(MULTI30K_SPLITS)}", split)
    stem = MULTI30K_SPLITS[split]
    paths = [require_file(data_dir / "multi30k" / f"{stem}.{lang}.gz") for lang in ("de", "en")]
    de, en = (read_lines(p) for p in paths)
    if len(de) != len(en):
        raise ValidationError("data file", f"{paths[0]} and {paths[1]} must have the same number of lines", (len(de), len(en)))
    return _take(list(zip(de, en)), max_examples)


def parse_ner_sentence(paragraph: str, where: str = "NER data") -> tuple[list[str], list[str]]:
    """One CoNLL-style paragraph 'char TAG\\n...' → (chars, tags); tags are NER_TAGS."""
    chars, tags = [], []
    for line in paragraph.splitlines():
        if not line.strip():
            continue
        char, _, tag = line.rpartition(" ")
        if not char or tag not in NER_TAGS:
            raise ValidationError("data file", f"{where}: lines must be 'char TAG' with a tag in {list(NER_TAGS)}",
                                  line)
        chars.append(char)
        tags.append(tag)
    return chars, tags


def load_ner(data_dir: pathlib.Path, split: str, max_examples: int | None = None) -> list[tuple[list[str], list[str]]]:
    """(chars, BIO tags) sentences of the Chinese NER corpus ('train' | 'test')."""
    if split not in NER_FILES:
        raise ValidationError("split", f"must be one of {sorted(NER_FILES)}", split)
    path = require_file(data_dir / "chinese_ner" / NER_FILES[split])
    sentences = [parse_ner_sentence(p, str(path)) for p in read_lines(path, by_paragraph=True)]
    return _take([s for s in sentences if s[0]], max_examples)


def toutiao_split_indices(n: int, seed: int) -> dict[str, np.ndarray]:
    """Seeded 80/10/10 permutation split of n titles into train/val/test index arrays."""
    perm = np.random.default_rng(seed).permutation(n)
    n_train = int(round(TOUTIAO_FRACTIONS[0] * n))
    n_val = int(round(TOUTIAO_FRACTIONS[1] * n))
    return {"train": perm[:n_train], "val": perm[n_train : n_train + n_val], "test": perm[n_train + n_val :]}


def load_toutiao(
    data_dir: pathlib.Path, split: str, *, seed: int = 0, max_examples: int | None = None
) -> list[tuple[str, int]]:
    """(title, label) pairs of one part ('train' | 'val' | 'test') of the seeded 80/10/10 split."""
    if split not in ("train", "val", "test"):
        raise ValidationError("split", "must be one of ['test', 'train', 'val']", split)
    path = require_file(data_dir / "toutiao" / TOUTIAO_FILE)
    rows = []
    for number, line in enumerate(read_lines(path), 1):
        title, sep, label = line.rpartition("_!_")
        label = label.strip()
        if not sep or not (label.isascii() and label.isdigit()) or not 0 <= int(label) < TOUTIAO_N_CLASSES:
            raise ValidationError("data file", f"{path} line {number}: lines must be 'title_!_label' with label in "
                                               f"0..{TOUTIAO_N_CLASSES - 1}", line)
        rows.append((title, int(label)))
    idx = toutiao_split_indices(len(rows), seed)[split]
    return _take([rows[i] for i in idx], max_examples)
