"""Is the circuit sufficient and necessary? Sufficiency, necessity, a random baseline and a resample test,
each scored raw and calibrated on the test split with calibrations fitted on the validation split.

Protocol (PAPER.md 7.4 and our additions): for every configuration scored (the circuit alone, the circuit
removed, a random circuit, the circuit with resampled rather than mean values, the full model), the logit
calibration (a >= 0, b) is fitted on validation prompts and applied frozen to the test prompts; the circuit
itself uses the calibration stored with it. Raw numbers are reported beside calibrated ones: necessity's
headline is raw (the damage done; free to exceed chance), and a circuit whose raw test accuracy is below
RAW_ACCURACY_FLOOR is "sufficient only after calibration".
"""

from __future__ import annotations

import contextlib

import torch

from sparsecircuits.circuits.ablations import make_donor_source
from sparsecircuits.circuits.edge_masks import EdgeGates
from sparsecircuits.circuits.masks import NodeMask
from sparsecircuits.circuits.prune import Evaluator
from sparsecircuits.circuits.scoring import Calibration, PromptSet, Score, fit_calibration
from sparsecircuits.model import GPT
from sparsecircuits.tasks.evaluate import DEFAULT_CONVENTION, chance_loss

RAW_ACCURACY_FLOOR = 0.9
VERDICTS = ("sufficient", "sufficient only after calibration", "not sufficient")


def sufficiency_verdict(sufficiency: dict, target: float) -> str:
    """One of VERDICTS for a sufficiency score (Score.to_json) against the target loss."""
    if sufficiency["loss_calibrated"] > target:
        return "not sufficient"
    if sufficiency["accuracy_raw"] < RAW_ACCURACY_FLOOR:
        return "sufficient only after calibration"
    return "sufficient"


def random_like(mask: NodeMask, gates: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """As many random nodes per location as `gates` keeps there. Returns [n_nodes] 0/1."""
    out = torch.zeros_like(gates)
    for (a, b), g in zip(zip(mask.offsets[:-1], mask.offsets[1:]), mask.split(gates).values()):
        n = int(g.sum())
        if n:
            out[a + torch.randperm(b - a, generator=gen)[:n]] = 1.0
    return out


class FrozenScorer:
    """Scores gate vectors of one ablation on the test prompts with a calibration fitted on validation prompts."""

    def __init__(self, model, mask, val, test, calibrated, convention, donors):
        self.val = Evaluator(model, mask, val, calibrated, convention, donors, split="val")
        self.test = Evaluator(model, mask, test, False, convention, donors, split="test")
        self.calibrated = calibrated

    def __call__(self, gates: torch.Tensor, calibration: Calibration | None = None) -> Score:
        if calibration is None and self.calibrated:
            calibration = fit_calibration(self.val.diff(gates), self.val.prompts.sign, "val")
        return self.test(gates, calibration or Calibration())


def _summarise(draws: list[Score]) -> dict:
    """Mean and std of each number over random draws, and the draws themselves."""
    out: dict = {"n": len(draws)}
    for key in ("loss_raw", "accuracy_raw", "loss_calibrated", "accuracy_calibrated", "logit_diff"):
        values = torch.tensor([getattr(s, key) for s in draws], dtype=torch.float64)
        out[key] = float(values.mean())
        out[f"{key}_std"] = float(values.std()) if len(draws) > 1 else 0.0
    out["draws"] = [s.to_json() for s in draws]
    return out


@torch.no_grad()
def validate(
    model: GPT,
    means: dict[str, torch.Tensor],
    gates: torch.Tensor,
    test: PromptSet,
    val: PromptSet,
    target: float,
    circuit_calibration: Calibration | None = None,
    calibrated: bool = True,
    convention: str = DEFAULT_CONVENTION,
    ablation: str = "mean",
    pretraining: str | None = None,
    n_random: int = 5,
    seed: int = 0,
    edges: EdgeGates | None = None,
) -> dict:
    """Score the circuit `gates` [n_nodes] five ways on `test` (see docs/formats.md, "validation").

    sufficiency: only the circuit kept, everything else ablated (with the circuit's own calibration,
    `circuit_calibration`, fitted on validation prompts when the circuit was pruned). necessity: only the
    circuit ablated in the full model. random: as many random nodes per location kept (n_random draws).
    resample: nodes outside the circuit take their values from a clean forward of random pretraining windows
    at the same positions (`pretraining`, a token file) instead of their mean (App. E). full_model: nothing
    ablated. The validation prompts `val` only serve to fit the calibrations, which are then frozen.
    edges: the circuit's closed edges (edge_masks.stored_edge_gates), ablated wherever the circuit runs alone.
    """
    circuit_only = (lambda: edges.hooks(model)) if edges is not None else contextlib.nullcontext

    def scorer(kind: str) -> FrozenScorer:
        donors = make_donor_source(model, kind, pretraining, seed)
        mask = NodeMask.for_model(model, means, kind)
        return FrozenScorer(model, mask, val, test, calibrated, convention, donors)

    main = scorer(ablation)
    gen = torch.Generator().manual_seed(seed)
    randoms = [main(random_like(main.test.mask, gates, gen)) for _ in range(n_random)]
    with circuit_only():
        sufficiency = main(gates, circuit_calibration if calibrated else None).to_json()
        resample = scorer("resample")(gates).to_json() if pretraining is not None else None
    result = {
        "split": "test",
        "n_prompts": len(test),
        "loss_convention": convention,
        "chance": chance_loss(convention),
        "target_loss": target,
        "calibration_fitted_on": "val" if calibrated else "none",
        "sufficiency": sufficiency,
        "necessity": main(1.0 - gates).to_json(),
        "random": _summarise(randoms),
        "full_model": main(torch.ones_like(gates)).to_json(),
    }
    if resample is not None:
        result["resample"] = resample
    result["verdict"] = sufficiency_verdict(result["sufficiency"], target)
    return result


@torch.no_grad()
def score_natural(
    model: GPT,
    means: dict[str, torch.Tensor],
    gates: torch.Tensor,
    natural: PromptSet,
    circuit_calibration: Calibration,
    convention: str = DEFAULT_CONVENTION,
    ablation: str = "mean",
    pretraining: str | None = None,
    seed: int = 0,
    edges: EdgeGates | None = None,
) -> dict:
    """The unpruned model and the circuit (with its frozen calibration) on prompts mined from real code.

    pretraining, seed: the donors of a resample ablation, as in `validate`; edges: as in `validate`.
    """
    mask = NodeMask.for_model(model, means, ablation)
    donors = make_donor_source(model, ablation, pretraining, seed)
    evaluate = Evaluator(model, mask, natural, False, convention, donors, split="natural")
    full = evaluate(torch.ones_like(gates)).to_json()
    with edges.hooks(model) if edges is not None else contextlib.nullcontext():
        circuit = evaluate(gates, circuit_calibration).to_json()
    return {"n_prompts": len(natural), "full_model": full, "circuit": circuit}
