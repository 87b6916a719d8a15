"""Tasks are declared on their generators (`@SUITE.task`), and the registry is built from the declarations."""

from __future__ import annotations

import random

import pytest

from sparsecircuits.tasks import all_tasks, suite, task_names
from sparsecircuits.tasks.base import Draft, TaskSuite


def test_each_task_is_declared_on_its_generator():
    # the registry is the declared tasks: each one's generator is the function of the same name in suite.py
    assert [t.generate for t in all_tasks()] == [getattr(suite, n) for n in task_names()]
    toys = TaskSuite()

    @toys.task("toy", "A toy task.", "`1` vs `2`", ["a", "b"], max_cue_chars=1)
    def toy(rng):
        return Draft(f"x{rng.randint(0, 10**6)} = ", "1", "2", "", "a", "b")

    (t,) = toys.tasks
    assert toy(random.Random(0)).correct_pos == "a"  # the generator itself is returned unchanged
    assert (t.name, t.candidates, t.max_cue_chars, t.generate) == ("toy", ("a", "b"), 1, toy)
    assert t.pairs(2, "val")[0].pos.correct == "a"
    with pytest.raises(ValueError, match="declared twice"):
        toys.task("toy", "again", "cue", ["a"])(toy)
