"""The task-mean ablation: nodes frozen at their mean over the task prompts the mask trains on."""

from __future__ import annotations

import pytest
import torch

import sparsecircuits as sc
from sparsecircuits.circuits.masks import NodeMask
from sparsecircuits.circuits.means import task_means
from sparsecircuits.circuits.prune import Evaluator
from sparsecircuits.circuits.scoring import Calibration, PromptSet
from sparsecircuits.circuits.session import ablation_means, circuit_train_prompts
from sparsecircuits.errors import UserError
from sparsecircuits.model import GPT, ModelConfig
from test_viewer import make_fixture


def small_model() -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=32, n_layer=2, d_model=16, n_head=2, d_head=8, d_mlp=64, n_ctx=16)
    return GPT(cfg).eval()


def prompts(n: int = 70, T: int = 12) -> PromptSet:
    g = torch.Generator().manual_seed(1)
    last = torch.randint(2, T, (n,), generator=g)
    ids = lambda *shape: torch.randint(0, 32, shape, generator=g)  # noqa: E731
    return PromptSet(ids(n, T), last, ids(n), ids(n), torch.ones(n))


def test_task_means_average_every_real_token_and_no_padding():
    model, p = small_model(), prompts()
    means = task_means(model, p)
    locs = model.node_locations()
    sums = {loc: torch.zeros(model.location_width(loc), dtype=torch.float64) for loc in locs}
    count = 0
    with torch.no_grad():
        for tokens, last in zip(p.tokens, p.last):  # each prompt alone, cut at its last token
            acts = model.run_with_cache(tokens[: int(last) + 1][None], locs)
            for loc in locs:
                sums[loc] += acts[loc][0].double().sum(0)
            count += int(last) + 1
    for loc in locs:
        assert torch.allclose(means[loc], (sums[loc] / count).float(), atol=1e-5), loc
    # more padding after the prompts changes nothing
    padded = PromptSet(torch.cat([p.tokens, p.tokens[:, :4]], 1), p.last, p.correct, p.wrong, p.sign)
    again = task_means(model, padded)
    assert all(torch.equal(again[loc], means[loc]) for loc in locs)


def test_a_closed_task_mean_mask_holds_every_node_at_its_task_mean():
    model, p = small_model(), prompts()
    means = task_means(model, p)
    widths = {loc: model.location_width(loc) for loc in model.node_locations()}
    mask = NodeMask(widths, means, "task-mean")
    seen = {}
    readers = {loc: (lambda name: lambda x: seen.__setitem__(name, x.clone()))(loc) for loc in widths}
    with torch.no_grad(), model.hooks(mask.hooks(torch.zeros(mask.n_nodes))), model.hooks(readers):
        model(p.tokens)
    for loc, x in seen.items():
        assert torch.equal(x, means[loc].expand_as(x)), loc
    with pytest.raises(UserError, match="task-mean ablation needs mean activations"):
        NodeMask(widths, None, "task-mean")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_fixture(tmp_path_factory.mktemp("task_mean"))


def test_a_task_mean_circuit_is_validated_with_the_means_it_was_pruned_with(tiny):
    task = "single_double_quote"
    circuit = sc.prune(
        tiny["run"],
        task,
        5.0,
        steps=3,
        train_pairs=8,
        eval_pairs=4,
        progress=False,
        ablation="task-mean",
        edges=False,
    )
    assert circuit.data["ablation"] == "task-mean"
    session = sc.api._session(tiny["run"], None, False)
    means = ablation_means(
        session.model,
        "task-mean",
        lambda: circuit_train_prompts(session.run, circuit.data),  # what validation averages over
        lambda: session.means,
    )
    # the same means as the mask trained with: the pairs it trained on are the training split's first 8
    assert all(
        torch.equal(means[k], v)
        for k, v in task_means(session.model, session.prompts(task, 8, "train", 0)).items()
    )
    assert any(not torch.equal(means[k], session.means[k]) for k in means)  # not the pretraining means
    mask = NodeMask.for_model(session.model, means, "task-mean")
    val = session.prompts(task, 4, "val", 0)
    score = Evaluator(session.model, mask, val, False, circuit.data["loss_convention"])(
        circuit.gates(session.model), Calibration.from_json(circuit.data["achieved"]["calibration"])
    )
    assert score.loss == pytest.approx(circuit.data["achieved"]["loss"], abs=1e-6)
    assert circuit.data["validation"]["verdict"]  # validated under the same ablation
    run = sc.load_run(tiny["run"])
    with torch.no_grad():
        expected = Evaluator(run.model, NodeMask.for_model(run.model, means, "task-mean"), val, False).diff(
            circuit.gates(run.model)
        )
        with circuit.apply(run) as model:  # the API recomputes the task means itself
            logits = model(val.tokens)
    rows = torch.arange(len(val))
    at_last = logits[rows, val.last]
    assert torch.allclose(at_last[rows, val.correct] - at_last[rows, val.wrong], expected, atol=1e-5)
