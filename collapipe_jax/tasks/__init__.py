"""Data, tokenizers, batching and metrics of the paper's three tasks (Multi30K, Chinese NER, Toutiao)."""

from collapipe_jax.tasks.data import resolve_data_dir
from collapipe_jax.tasks.registry import NER_TAGS, TASKS, TaskData, load_task

__all__ = ["NER_TAGS", "TASKS", "TaskData", "load_task", "resolve_data_dir"]
