"""Evaluation metrics of the three tasks.

- Multi30K: corpus BLEU by sacrebleu (13a tokenisation, detokenised hypotheses vs raw references).
- Chinese NER: entity-level precision / recall / F1 by seqeval (micro over entity types; an
  entity counts only if type and both boundaries match, CoNLL convention).
- Toutiao: accuracy, macro-F1 (unweighted mean of per-class F1 over the classes present in
  either labels or predictions; a class never predicted has F1 0) and micro-F1 (= accuracy for
  single-label classification; reported because label 12 is rare, see data README).
"""

from __future__ import annotations

import numpy as np
import sacrebleu
from seqeval.metrics import f1_score, precision_score, recall_score

from collapipe_jax.errors import ValidationError


def corpus_bleu(hypotheses: list[str], references: list[str], lowercase: bool = False) -> float:
    """sacrebleu corpus BLEU (0..100) of detokenised hypotheses against one reference each;
    `lowercase` compares both sides lowercased (how Multi30K results are often quoted)."""
    if len(hypotheses) != len(references):
        raise ValidationError("hypotheses", f"must have one per reference ({len(references)})", len(hypotheses))
    return float(sacrebleu.corpus_bleu(hypotheses, [references], lowercase=lowercase).score)


def entity_scores(gold_tags: list[list[str]], pred_tags: list[list[str]]) -> dict[str, float]:
    """seqeval entity precision, recall and F1 (micro over PER/LOC/ORG)."""
    if len(gold_tags) != len(pred_tags) or any(len(g) != len(p) for g, p in zip(gold_tags, pred_tags)):
        raise ValidationError("pred_tags", "must match gold_tags sentence by sentence and token by token", None)
    return {
        "entity_f1": float(f1_score(gold_tags, pred_tags, zero_division=0)),
        "entity_precision": float(precision_score(gold_tags, pred_tags, zero_division=0)),
        "entity_recall": float(recall_score(gold_tags, pred_tags, zero_division=0)),
    }


def classification_scores(labels, predictions) -> dict[str, float]:
    """Accuracy, macro-F1 and micro-F1 of integer class predictions."""
    y = np.asarray(labels).astype(np.int64).ravel()
    p = np.asarray(predictions).astype(np.int64).ravel()
    if y.shape != p.shape or y.size == 0:
        raise ValidationError("predictions", "must be a non-empty array shaped like labels", p.shape)
    classes = np.union1d(y, p)
    f1s = []
    for c in classes:
        tp = np.sum((p == c) & (y == c))
        fp = np.sum((p == c) & (y != c))
        fn = np.sum((p != c) & (y == c))
        denom = 2 * tp + fp + fn
        f1s.append(0.0 if denom == 0 else 2 * tp / denom)
    accuracy = float(np.mean(y == p))
    return {"accuracy": accuracy, "macro_f1": float(np.mean(f1s)), "micro_f1": accuracy}
