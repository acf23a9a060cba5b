"""The three tasks as fixed-shape numpy arrays plus the metric that scores model predictions.

Batch keys are the models' (models/transformer.py, models/bert.py); ids PAD 0, BOS/[CLS] 1, EOS 2:
  multi30k (seq2seq):       tokens int32 [B, T] (German BPE ids), tgt int32 [B, T + 1]
                            (BOS, English BPE ids, EOS, PAD...; the decoder reads tgt[:, :-1]
                            and predicts tgt[:, 1:])
  ner (tagging):            tokens int32 [B, T] ([CLS], characters), labels int32 [B, T]
                            (index into NER_TAGS; −1 at [CLS] and padding: not scored)
  toutiao (classification): tokens int32 [B, T] ([CLS], characters), label int32 [B]
Sequences longer than T are truncated.

`TaskData.score(predictions)` turns predictions on the test split into metrics:
  multi30k: token ids [D, T'] of greedy decodes → {"bleu", "bleu_lowercase"} against the raw test_2016_flickr English
  ner:      tag ids [D, T] (position 0 = [CLS]) → seqeval {"entity_f1", "entity_precision",
            "entity_recall"} on the characters the model sees (the first T − 1)
  toutiao:  class ids [D] → {"accuracy", "macro_f1", "micro_f1"}
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import pathlib
from collections import Counter
from typing import Callable

import numpy as np

from collapipe_jax.errors import ValidationError
from collapipe_jax.tasks import data as data_lib
from collapipe_jax.tasks import metrics
from collapipe_jax.tasks.batching import pad_rows
from collapipe_jax.tasks.vocab import BOS, CLS, EOS, PAD, SPECIALS, build_char_vocab, train_bpe

TASKS = ("multi30k", "ner", "toutiao")
NER_TAGS = data_lib.NER_TAGS
N_LENGTH_BUCKETS = 4  # non-IID "labels" for translation: source-length quartiles


@dataclasses.dataclass(frozen=True)
class TaskData:
    name: str
    kind: str  # "seq2seq" | "tagging" | "classification"
    train: dict[str, np.ndarray]
    test: dict[str, np.ndarray]
    vocab_size: int  # input (and, for seq2seq, shared output) vocabulary
    n_labels: int  # tags or classes; 0 for seq2seq
    seq_len: int
    partition_labels: np.ndarray  # [D_train] int: what a non-IID split is skewed by
    score: Callable[[np.ndarray], dict[str, float]]
    primary_metric: str
    vocab_id: str = ""  # digest of the input vocabulary: a model moves only between equal ones

    @property
    def n_train(self) -> int:
        return int(self.partition_labels.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.test["tokens"].shape[0])


def load_task(
    name: str,
    *,
    seq_len: int,
    data_dir=None,
    vocab_size: int = 8000,
    max_examples: int | None = None,
    max_eval_examples: int | None = None,
    seed: int = 0,
    cache_dir=None,
) -> TaskData:
    """Load, tokenise and pad one task. `vocab_size` bounds the Multi30K BPE (the Chinese tasks
    use every training character); `max_examples` / `max_eval_examples` take the first examples
    of the training / test split for tests and quick runs."""
    if name not in TASKS:
        raise ValidationError("task", f"must be one of {list(TASKS)}", name)
    if not isinstance(seq_len, int) or seq_len < 2:
        raise ValidationError("seq_len", "must be an integer >= 2", seq_len)
    root = data_lib.resolve_data_dir(data_dir)
    if name == "multi30k":
        return _multi30k(root, seq_len, vocab_size, max_examples, max_eval_examples, cache_dir)
    if name == "ner":
        return _ner(root, seq_len, max_examples, max_eval_examples)
    return _toutiao(root, seq_len, max_examples, max_eval_examples, seed)


def _multi30k(root, seq_len, vocab_size, max_examples, max_eval_examples, cache_dir) -> TaskData:
    train = data_lib.load_multi30k(root, "train", max_examples)
    test = data_lib.load_multi30k(root, "test", max_eval_examples)
    tok = train_bpe([de for de, _ in train] + [en for _, en in train], vocab_size, cache_dir=cache_dir)

    def encode(pairs):
        src = [e.ids for e in tok.encode_batch([de for de, _ in pairs])]
        tgt = [e.ids for e in tok.encode_batch([en for _, en in pairs])]
        tokens, _ = pad_rows(src, seq_len)
        tgt_ids, _ = pad_rows([[BOS] + y[: seq_len - 1] + [EOS] for y in tgt], seq_len + 1)
        return {"tokens": tokens, "tgt": tgt_ids}, src

    train_arrays, train_src = encode(train)
    test_arrays, _ = encode(test)
    references = [en for _, en in test]
    lengths = np.array([len(s) for s in train_src])
    buckets = np.searchsorted(np.quantile(lengths, np.linspace(0, 1, N_LENGTH_BUCKETS + 1)[1:-1]), lengths, side="right")

    def score(pred_ids):
        pred_ids = np.asarray(pred_ids)
        _check_rows(pred_ids, len(references))
        hyps = [tok.decode(_until_eos(row), skip_special_tokens=True) for row in pred_ids]
        return {"bleu": metrics.corpus_bleu(hyps, references),  # cased sacreBLEU
                "bleu_lowercase": metrics.corpus_bleu(hyps, references, lowercase=True)}

    return TaskData("multi30k", "seq2seq", train_arrays, test_arrays, tok.get_vocab_size(), 0, seq_len,
                    buckets.astype(np.int32), score, "bleu", digest(tok.to_str()))


def _until_eos(row) -> list[int]:
    ids = [int(i) for i in row]
    return ids[: ids.index(EOS)] if EOS in ids else ids


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@functools.lru_cache(maxsize=4)
def chinese_vocab(root: pathlib.Path):
    """One character vocabulary for both Chinese tasks, so that a model moves between them (the
    paper pre-trains BERT on NER and fine-tunes it on Toutiao): every character of the NER
    training file and of the Toutiao training split (seed 0), whatever the run's seed and
    `max_examples` (the vocabulary, and with it the embedding table, never depends on them)."""
    ner = data_lib.load_ner(root, "train")
    toutiao = data_lib.load_toutiao(root, "train", seed=0)
    return build_char_vocab(itertools.chain(("".join(chars) for chars, _ in ner), (title for title, _ in toutiao)))


def _ner(root, seq_len, max_examples, max_eval_examples) -> TaskData:
    train = data_lib.load_ner(root, "train", max_examples)
    test = data_lib.load_ner(root, "test", max_eval_examples)
    vocab = chinese_vocab(root)
    tag_id = {t: i for i, t in enumerate(NER_TAGS)}

    def encode(sents):
        tokens, mask = pad_rows([[CLS] + vocab.encode(chars) for chars, _ in sents], seq_len)
        labels, _ = pad_rows([[-1] + [tag_id[t] for t in tags] for _, tags in sents], seq_len, pad=-1)
        return {"tokens": tokens, "labels": labels}

    gold = [tags[: seq_len - 1] for _, tags in test]

    def score(pred_ids):
        pred_ids = np.asarray(pred_ids)
        _check_rows(pred_ids, len(gold))
        if pred_ids.min(initial=0) < 0 or pred_ids.max(initial=0) >= len(NER_TAGS):
            raise ValidationError("predictions", f"tag ids must lie in 0..{len(NER_TAGS) - 1}", None)
        pred = [[NER_TAGS[int(i)] for i in row[1 : 1 + len(g)]] for row, g in zip(pred_ids, gold)]
        return metrics.entity_scores(gold, pred)

    def dominant_type(tags):
        types = Counter(t[2:] for t in tags if t.startswith("B-"))
        return 0 if not types else 1 + ("PER", "LOC", "ORG").index(max(sorted(types), key=types.get))

    labels = np.array([dominant_type(tags) for _, tags in train], dtype=np.int32)
    return TaskData("ner", "tagging", encode(train), encode(test), vocab.size, len(NER_TAGS), seq_len,
                    labels, score, "entity_f1", digest("".join(vocab.chars)))


def _toutiao(root, seq_len, max_examples, max_eval_examples, seed) -> TaskData:
    train = data_lib.load_toutiao(root, "train", seed=seed, max_examples=max_examples)
    test = data_lib.load_toutiao(root, "test", seed=seed, max_examples=max_eval_examples)
    vocab = chinese_vocab(root)

    def encode(rows):
        tokens, _ = pad_rows([[CLS] + vocab.encode(title) for title, _ in rows], seq_len)
        return {"tokens": tokens, "label": np.array([y for _, y in rows], dtype=np.int32)}

    test_arrays = encode(test)

    def score(pred_ids):
        pred_ids = np.asarray(pred_ids).reshape(-1)
        _check_rows(pred_ids, len(test))
        return metrics.classification_scores(test_arrays["label"], pred_ids)

    train_arrays = encode(train)
    return TaskData("toutiao", "classification", train_arrays, test_arrays, vocab.size, data_lib.TOUTIAO_N_CLASSES,
                    seq_len, train_arrays["label"].copy(), score, "accuracy", digest("".join(vocab.chars)))


def _check_rows(pred, n):
    if pred.shape[0] != n:
        raise ValidationError("predictions", f"must have one row per test example ({n})", pred.shape)


__all__ = ["TASKS", "NER_TAGS", "SPECIALS", "TaskData", "load_task"]
