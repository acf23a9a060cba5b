"""Tasks: data-dir resolution, loading, tokenizers, batching, splits and metrics."""

import gzip
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from collapipe_jax.errors import ValidationError
from collapipe_jax.tasks import batching, data, metrics, vocab
from collapipe_jax.tasks.registry import NER_TAGS, load_task

# $COLLAPIPE_DATA if set, else the repository's own data/ (tests need nothing beside the clone)
DATA = data.resolve_data_dir()


# ---------------------------------------------------------------- data directory and files


def test_data_dir_precedence(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    monkeypatch.setenv(data.DATA_ENV, str(b))
    assert data.resolve_data_dir(a) == a.resolve()
    assert data.resolve_data_dir(None) == b.resolve()
    monkeypatch.delenv(data.DATA_ENV)
    monkeypatch.chdir(tmp_path)  # the default does not depend on the working directory
    assert data.resolve_data_dir(None) == data.REPO_DATA_DIR.resolve()
    monkeypatch.setattr(data, "REPO_DATA_DIR", tmp_path / "missing")
    with pytest.raises(ValidationError, match="data_dir") as err:
        data.resolve_data_dir(None)
    assert "--data-dir" in str(err.value) and data.DATA_ENV in str(err.value) and "\n" not in str(err.value)


def test_repository_data_dir_is_inside_the_checkout():
    root = pathlib.Path(__file__).resolve().parents[1]
    assert data.REPO_DATA_DIR == root / "data"
    for rel in ("multi30k/train.de.gz", "chinese_ner/example_test.txt", "toutiao/toutiao_subset.txt", "README.md"):
        assert (root / "data" / rel).is_file(), rel


def test_read_lines_gzip_plain_crlf_and_paragraphs(tmp_path):
    text = "a b\r\nc\x1cd\n\n\ne\n"  # CRLF, a file separator inside a line, blank lines
    plain, packed = tmp_path / "t.txt", tmp_path / "t.txt.gz"
    plain.write_bytes(text.encode("utf-8"))
    with gzip.open(packed, "wb") as f:
        f.write(text.encode("utf-8"))
    for path in (plain, packed):
        assert data.read_lines(path) == ["a b", "c\x1cd", "", "", "e"]
        assert data.read_lines(path, by_paragraph=True) == ["a b\nc\x1cd", "\ne\n"]
    no_final_newline = tmp_path / "u.txt"
    no_final_newline.write_text("x\ny", encoding="utf-8")
    assert data.read_lines(no_final_newline) == ["x", "y"]


def test_reading_the_corpora_leaves_nothing_in_home(tmp_path):
    # a fresh interpreter with an empty $HOME: libraries that cache (or lock) by default would
    # write under it when they are imported or read a file
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "XDG_"))}
    env.update(HOME=str(home), PYTHONPATH=str(pathlib.Path(__file__).resolve().parents[1]))
    code = ("from collapipe_jax.tasks import data; d = data.resolve_data_dir(); "
            "data.load_multi30k(d, 'val'); data.load_ner(d, 'test'); data.load_toutiao(d, 'val')")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    assert [p.relative_to(home) for p in home.rglob("*")] == []


@pytest.mark.parametrize(
    "task,missing",
    [("multi30k", "multi30k/train.en.gz"), ("ner", "chinese_ner/example_test.txt"), ("toutiao", "toutiao/toutiao_subset.txt")],
)
def test_missing_file_error_names_it(tmp_path, task, missing):
    (tmp_path / "multi30k").mkdir()
    with gzip.open(tmp_path / "multi30k" / "train.de.gz", "wt") as f:
        f.write("ein Hund\n")
    (tmp_path / "chinese_ner").mkdir()
    (tmp_path / "toutiao").mkdir()
    with pytest.raises(ValidationError) as err:
        load_task(task, seq_len=8, data_dir=tmp_path)
    assert str(tmp_path / missing) in str(err.value)


def test_multi30k_pairs_align():
    pairs = data.load_multi30k(DATA, "test", max_examples=3)
    assert len(pairs) == 3
    with gzip.open(DATA / "multi30k" / "test_2016_flickr.en.gz", "rt") as f:
        en = [next(f).rstrip("\n") for _ in range(3)]
    assert [p[1] for p in pairs] == en


def test_ner_parsing_and_counts():
    chars, tags = data.parse_ner_sentence("青 B-ORG\n岛 I-ORG\n队 O\n")
    assert chars == ["青", "岛", "队"] and tags == ["B-ORG", "I-ORG", "O"]
    with pytest.raises(ValidationError):
        data.parse_ner_sentence("青 X-ORG")
    dev = data.load_ner(DATA, "test")
    assert len(dev) == 2318  # README: example_dev.txt holds 2,318 sentences


def test_toutiao_split_is_a_seeded_partition():
    n = 1000
    parts = data.toutiao_split_indices(n, seed=3)
    sizes = [len(parts[k]) for k in ("train", "val", "test")]
    assert sizes == [800, 100, 100]
    assert np.array_equal(np.sort(np.concatenate(list(parts.values()))), np.arange(n))
    again = data.toutiao_split_indices(n, seed=3)
    assert all(np.array_equal(parts[k], again[k]) for k in parts)
    assert not np.array_equal(parts["train"], data.toutiao_split_indices(n, seed=4)["train"])


# ---------------------------------------------------------------- tokenizers


def test_char_vocab_order_and_roundtrip():
    v = vocab.build_char_vocab(["abca", "cb", "c"])  # counts: c 3, a 2, b 2
    assert v.chars == ("c", "a", "b")
    assert v.encode("cab?") == [4, 5, 6, vocab.UNK]
    assert v.decode([vocab.BOS, 5, 6, vocab.PAD]) == "ab"


def test_bpe_deterministic_cached_and_reversible(tmp_path):
    texts = [de for de, _ in data.load_multi30k(DATA, "train", 50)]
    t1 = vocab.train_bpe(texts, 300, cache_dir=tmp_path / "c1")
    t2 = vocab.train_bpe(texts, 300, cache_dir=tmp_path / "c2")
    assert t1.get_vocab() == t2.get_vocab()
    assert len(list((tmp_path / "c1").glob("bpe-*.json"))) == 1
    t3 = vocab.train_bpe(texts, 300, cache_dir=tmp_path / "c1")  # from the cache
    assert t3.get_vocab() == t1.get_vocab()
    assert [t1.token_to_id(s) for s in vocab.SPECIALS] == [0, 1, 2, 3]
    assert all(t1.decode(t1.encode(s).ids) == s for s in texts)


# ---------------------------------------------------------------- batching and splits


def test_pad_rows():
    ids, mask = batching.pad_rows([[5, 6, 7], [8], []], 2)
    assert ids.tolist() == [[5, 6], [8, 0], [0, 0]]
    assert mask.tolist() == [[True, True], [True, False], [False, False]]


@pytest.mark.parametrize("n,clusters", [(10, 3), (7, 7), (101, 16)])
def test_iid_split_covers_every_example_once(n, clusters):
    parts = batching.iid_split(n, clusters, seed=1)
    assert len(parts) == clusters
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_dirichlet_split_covers_and_skews():
    labels = np.repeat(np.arange(5), 40)
    parts = batching.dirichlet_split(labels, 4, alpha=0.1, seed=0)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(200))
    assert all(len(p) > 0 for p in parts)
    # small alpha: each cluster is dominated by few labels, unlike an IID split
    top_share = np.mean([np.bincount(labels[p]).max() / len(p) for p in parts])
    iid_share = np.mean([np.bincount(labels[p]).max() / len(p) for p in batching.iid_split(200, 4, 0)])
    assert top_share > iid_share + 0.2


def test_split_errors():
    with pytest.raises(ValidationError, match="n_clusters"):
        batching.iid_split(2, 3, 0)
    with pytest.raises(ValidationError, match="dirichlet_alpha"):
        batching.dirichlet_split(np.zeros(10), 2, alpha=0.0, seed=0)


def test_round_indices_walk_epochs_without_repeats():
    parts = [np.array([10, 11, 12, 13, 14]), np.array([20, 21, 22])]
    # two rounds of b=5 for cluster 0 are exactly two epochs: each a permutation of its examples
    r0 = batching.round_indices(parts, 5, 0, seed=7)
    r1 = batching.round_indices(parts, 5, 1, seed=7)
    assert sorted(r0[0]) == sorted(r1[0]) == [10, 11, 12, 13, 14]
    assert set(r0[1]) == {20, 21, 22}  # b > D_n: wraps to the next epoch
    assert np.array_equal(r1, batching.round_indices(parts, 5, 1, seed=7))  # pure in (seed, round)
    stream = np.concatenate([batching.round_indices(parts, 5, r, 7)[1] for r in range(3)])  # 15 = 5 epochs of 3
    assert all(sorted(stream[i : i + 3]) == [20, 21, 22] for i in range(0, 15, 3))


# ---------------------------------------------------------------- metrics (hand-worked values)


def test_classification_scores_hand_worked():
    y = [0, 0, 1, 1, 2]
    p = [0, 1, 1, 1, 0]
    # class 0: tp1 fp1 fn1 → F1 1/2; class 1: tp2 fp1 fn0 → 4/5; class 2: tp0 fn1 → 0
    s = metrics.classification_scores(y, p)
    assert s["accuracy"] == pytest.approx(3 / 5)
    assert s["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert s["micro_f1"] == pytest.approx(3 / 5)


def test_entity_scores_hand_worked():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "O", "O"]]
    # gold entities: PER(0-1), LOC(3), ORG(0-1); predicted: PER(0-1) correct, ORG(0) wrong boundary
    s = metrics.entity_scores(gold, pred)
    assert s["entity_precision"] == pytest.approx(1 / 2)
    assert s["entity_recall"] == pytest.approx(1 / 3)
    assert s["entity_f1"] == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))


def test_bleu_hand_worked():
    ref = ["the cat sat on the mat"]
    assert metrics.corpus_bleu(ref, ref) == pytest.approx(100.0)
    # hypothesis "the cat sat on mat": n-gram precisions 5/5, 3/4, 2/3 ("the cat sat", "cat sat on"),
    # 1/2 ("the cat sat on"); brevity penalty exp(1 - 6/5)
    import math

    hyp = ["the cat sat on mat"]
    p = [5 / 5, 3 / 4, 2 / 3, 1 / 2]
    expected = 100 * math.exp(1 - 6 / 5) * math.exp(sum(math.log(x) for x in p) / 4)
    assert metrics.corpus_bleu(hyp, ref) == pytest.approx(expected, rel=1e-9)
    # zero 4-gram matches: sacrebleu's default 'exp' smoothing uses 1 / (2 · total) for it
    hyp2 = ["a cat sat on a mat"]  # precisions 4/6, 2/5, 1/4 ("cat sat on"), 0/3 → 1/6
    p2 = [4 / 6, 2 / 5, 1 / 4, 1 / 6]
    expected2 = 100 * math.exp(sum(math.log(x) for x in p2) / 4)
    assert metrics.corpus_bleu(hyp2, ref) == pytest.approx(expected2, rel=1e-9)
    # case: "The Cat" matches "the cat" only lowercased
    hyp3 = ["The Cat sat on the mat"]  # cased precisions 4/6, 3/5, 2/4, 1/3
    p3 = [4 / 6, 3 / 5, 2 / 4, 1 / 3]
    assert metrics.corpus_bleu(hyp3, ref) == pytest.approx(100 * math.exp(sum(math.log(x) for x in p3) / 4),
                                                           rel=1e-9)
    assert metrics.corpus_bleu(hyp3, ref, lowercase=True) == pytest.approx(100.0)


# ---------------------------------------------------------------- whole tasks


@pytest.mark.parametrize("task", ["multi30k", "ner", "toutiao"])
def test_load_task_shapes_and_gold_scores(task, tmp_path):
    td = load_task(task, seq_len=16, data_dir=DATA, max_examples=30, max_eval_examples=12, vocab_size=400,
                   cache_dir=tmp_path)
    assert td.n_train == 30 and td.n_test == 12
    assert td.train["tokens"].shape == (30, 16) and td.train["tokens"].dtype == np.int32
    assert td.train["tokens"].max() < td.vocab_size
    if task == "multi30k":
        tgt = td.train["tgt"]
        assert tgt.shape == (30, 17) and np.all(tgt[:, 0] == vocab.BOS)
        assert np.all(np.sum(tgt == vocab.EOS, axis=1) == 1)  # every target ends with EOS, even truncated
        eos = np.argmax(tgt == vocab.EOS, axis=1)
        assert all(np.all(tgt[i, eos[i] + 1:] == vocab.PAD) and np.all(tgt[i, 1:eos[i]] > vocab.EOS) for i in range(30))
        assert td.score(np.zeros((12, 16), np.int32))["bleu"] == 0.0
        gold = td.test["tgt"][:, 1:]  # the references themselves, truncated, unknown characters dropped
        assert td.score(gold)["bleu"] > td.score(np.roll(gold, 1, axis=0))["bleu"] + 20.0
    elif task == "ner":
        labels = td.test["labels"]
        assert np.all(labels[:, 0] == -1)
        assert np.all((labels >= 0) == ((td.test["tokens"] != vocab.PAD) & (np.arange(16)[None] > 0)))
        assert td.score(np.maximum(labels, 0))["entity_f1"] == 1.0
        assert td.score(np.zeros_like(labels))["entity_f1"] == 0.0
        assert td.n_labels == len(NER_TAGS)
    else:
        s = td.score(td.test["label"])
        assert s["accuracy"] == 1.0 and s["macro_f1"] == 1.0
        assert np.all(td.train["tokens"][:, 0] == vocab.CLS)
    with pytest.raises(ValidationError, match="predictions"):
        td.score(np.zeros((3, 16), dtype=np.int32))
