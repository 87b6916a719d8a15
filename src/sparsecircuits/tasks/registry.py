"""Look up tasks by their paper names. The registry is the tasks declared in suite.py (`@SUITE.task`)."""

from __future__ import annotations

from sparsecircuits.errors import UserError
from sparsecircuits.tasks.base import Task
from sparsecircuits.tasks.suite import TASKS

_BY_NAME: dict[str, Task] = {t.name: t for t in TASKS}


def task_names() -> list[str]:
    """The task names, in the paper's order."""
    return [t.name for t in TASKS]


def all_tasks() -> list[Task]:
    """All tasks, in the paper's order."""
    return list(TASKS)


def get_task(name: str | Task) -> Task:
    """The task called `name` (a Task passes through); an unknown name is a UserError listing valid ones."""
    if isinstance(name, Task):
        return name
    if name not in _BY_NAME:
        raise UserError(f"unknown task {name!r}; valid tasks: {', '.join(task_names())}")
    return _BY_NAME[name]
