"""The task suite: the paper's 20 binary Python next-token tasks, and their evaluation."""

from sparsecircuits.tasks.base import SPLITS, Pair, Prompt, Task
from sparsecircuits.tasks.registry import all_tasks, get_task, task_names

__all__ = ["SPLITS", "Pair", "Prompt", "Task", "all_tasks", "get_task", "task_names"]
