"""Tokenizers: a BPE trained locally with `tokenizers` (Multi30K) and character vocabularies
(Chinese NER, Toutiao). Both are deterministic functions of their training text, and the BPE is
cached as JSON under a cache directory keyed by a hash of that text and the settings.

Special ids are shared by every vocabulary and match the models' conventions
(models/transformer.py, models/bert.py): PAD = 0, BOS = 1 (= BERT's [CLS]), EOS = 2, UNK = 3.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import sys
from collections import Counter

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from collapipe_jax.errors import ValidationError
from collapipe_jax.io import atomic_write_text

PAD, BOS, EOS, UNK = 0, 1, 2, 3
CLS = BOS
SPECIALS = ["[PAD]", "[BOS]", "[EOS]", "[UNK]"]


@dataclasses.dataclass(frozen=True)
class CharVocab:
    """Character ↔ id table; ids 0..3 are the specials, then characters by (−count, char)."""

    chars: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(SPECIALS) + len(self.chars)

    def encode(self, text) -> list[int]:
        index = self._index
        return [index.get(c, UNK) for c in text]

    def decode(self, ids) -> str:
        out = []
        for i in ids:
            i = int(i)
            if i >= len(SPECIALS):
                out.append(self.chars[i - len(SPECIALS)])
        return "".join(out)

    @property
    def _index(self) -> dict[str, int]:
        cached = self.__dict__.get("_index_cache")
        if cached is None:
            cached = {c: i + len(SPECIALS) for i, c in enumerate(self.chars)}
            object.__setattr__(self, "_index_cache", cached)
        return cached


def build_char_vocab(texts, *, min_freq: int = 1, max_size: int | None = None) -> CharVocab:
    """Characters seen at least `min_freq` times, most frequent first (ties by code point)."""
    if min_freq < 1:
        raise ValidationError("min_freq", "must be >= 1", min_freq)
    counts = Counter()
    for text in texts:
        counts.update(text)
    ranked = sorted((c for c, k in counts.items() if k >= min_freq), key=lambda c: (-counts[c], c))
    if max_size is not None:
        ranked = ranked[: max(0, max_size - len(SPECIALS))]
    return CharVocab(tuple(ranked))


def default_cache_dir() -> pathlib.Path:
    base = os.environ.get("COLLAPIPE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "collapipe_jax")
    return pathlib.Path(base)


def train_bpe(texts: list[str], vocab_size: int, *, cache_dir: str | os.PathLike | None = None):
    """A byte-pair-encoding `tokenizers.Tokenizer` trained on `texts` (joint de+en vocabulary).

    NFKC normalisation, Metaspace pre-tokenisation (so decode(encode(s)) restores spacing, which
    BLEU on detokenised text needs), ids 0..3 the shared specials. Cached as JSON under
    cache_dir/bpe-<hash>.json, the hash covering the text and the settings.
    """
    if vocab_size < len(SPECIALS) + 1:
        raise ValidationError("vocab_size", f"must be > {len(SPECIALS)}", vocab_size)
    digest = hashlib.sha256()
    digest.update(f"bpe-v1|{vocab_size}|".encode())
    for t in texts:
        digest.update(t.encode("utf-8"))
        digest.update(b"\n")
    cache = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / f"bpe-{digest.hexdigest()[:16]}.json"
    if path.is_file():
        if (cached := _cached_tokenizer(path, vocab_size)) is not None:
            return cached
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    # atomic: concurrent runs never read a half-written tokenizer
    atomic_write_text(path, tok.to_str())
    return tok


def _cached_tokenizer(path: pathlib.Path, vocab_size: int):
    """The tokenizer cached in `path`, or None after one warning line when the file is damaged
    (truncated, edited, another format): the cache is derived, so the caller rebuilds it."""
    try:
        tok = Tokenizer.from_file(str(path))
        ok = (tok.get_vocab_size() <= vocab_size
              and [tok.token_to_id(t) for t in SPECIALS] == list(range(len(SPECIALS))))
        why = "not this tokenizer's vocabulary"
    except Exception as err:  # noqa: BLE001 - tokenizers raises a bare Exception for bad JSON
        ok, why = False, str(err).splitlines()[0][:120] if str(err) else type(err).__name__
    if ok:
        return tok
    print(f"collapipe: warning: the cached tokenizer {path} is damaged ({why}): rebuilding it", file=sys.stderr)
    return None
