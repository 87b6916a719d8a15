"""The versioned `*.circuit.json` file: what was pruned, the nodes and edges, and how well it holds up.

Schema `sparsecircuits.circuit/2` (see docs/formats.md for every field). Node names are flat
`HOOK.INDEX` strings (`3.attn.v.17`, `0.mlp.post_act.460`) as in DESIGN.md. Files of schema 1 (before the
raw-and-calibrated scores and the loss conventions) are read and upgraded in memory by `upgrade_v1`.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from sparsecircuits.circuits.nodes import location_order, parse_node_name
from sparsecircuits.errors import UserError
from sparsecircuits.io import atomic_write_json, read_json
from sparsecircuits.model.config import ModelConfig

SCHEMA = "sparsecircuits.circuit/2"
SCHEMA_V1 = "sparsecircuits.circuit/1"
REQUIRED_KEYS = ("schema", "model", "task", "ablation", "target_loss", "achieved", "nodes", "edges", "counts")


def write_circuit(path: str | Path, circuit: dict[str, Any]) -> None:
    """Atomically write a circuit dict (schema key added)."""
    circuit = {"schema": SCHEMA, **{k: v for k, v in circuit.items() if k != "schema"}}
    check_circuit(circuit, str(path))
    atomic_write_json(path, circuit)


def read_circuit(path: str | Path) -> dict[str, Any]:
    """Read and check a circuit file; a wrong or unknown schema is a UserError."""
    circuit = read_json(path, "circuit file")
    if isinstance(circuit, dict) and circuit.get("schema") == SCHEMA_V1:
        circuit = upgrade_v1(circuit)
    check_circuit(circuit, str(path))
    return circuit


def check_pruned_from(circuit: dict[str, Any], content_hash: str, where: str) -> None:
    """UserError unless the circuit records the content hash `content_hash` (circuits.means.model_content_hash)
    of the model it is about to be used with."""
    if circuit["model"].get("content_hash") != content_hash:
        raise UserError(f"{where} was pruned from another model (content hash differs)")


def check_circuit(circuit: Any, where: str = "circuit") -> None:
    """UserError (one line) unless `circuit` is of the schema, has every required key, a positive numeric
    target_loss and a non-empty list of distinct node names that exist in the model: checked against the
    recorded `model.config` when there is one, else by their form only (`LAYER.LOCATION.INDEX`)."""
    if not isinstance(circuit, dict) or circuit.get("schema") != SCHEMA:
        found = circuit.get("schema") if isinstance(circuit, dict) else type(circuit).__name__
        raise UserError(f"{where}: not a circuit file of schema {SCHEMA} (found {found!r})")
    missing = [k for k in REQUIRED_KEYS if k not in circuit]
    if missing:
        raise UserError(f"{where}: circuit file lacks {', '.join(missing)}")
    target = circuit["target_loss"]
    numeric = isinstance(target, (int, float)) and not isinstance(target, bool)
    if not (numeric and math.isfinite(target) and target > 0):
        raise UserError(f"{where}: target_loss must be a positive number, got {target!r}")
    check_node_names(circuit["nodes"], recorded_model_config(circuit, where), where)


def recorded_model_config(circuit: dict[str, Any], where: str) -> ModelConfig | None:
    """The model config the circuit file records (`model.config`), or None when it records none."""
    model = circuit["model"]
    if not isinstance(model, dict):
        raise UserError(f"{where}: 'model' must be an object, got {type(model).__name__}")
    config = model.get("config")
    if config is None:
        return None
    if not isinstance(config, dict):
        raise UserError(f"{where}: model.config must be an object, got {type(config).__name__}")
    try:
        return ModelConfig.from_dict(config)
    except (UserError, TypeError, ValueError) as e:
        raise UserError(f"{where}: bad model.config ({e})") from None


_NODE_FORM = re.compile(r"(?P<loc>[0-9]+\.[a-z_.]+)\.(?:[0-9]+|head[0-9]+\.ch[0-9]+)")


def check_node_names(names: Any, cfg: ModelConfig | None, where: str) -> None:
    """UserError unless `names` is a non-empty list of distinct node names of the model `cfg` (when known).

    Without a config only the form is checked (`LAYER.LOCATION.INDEX` with a known location); with one,
    a name and its head form (`0.attn.v.5` and `0.attn.v.head1.ch1` when d_head is 4) are the same node."""
    if not isinstance(names, list) or not names:
        found = f"{len(names)} nodes" if isinstance(names, list) else type(names).__name__
        raise UserError(f"{where}: a circuit needs a non-empty list of node names (found {found})")
    seen: dict[Any, str] = {}
    for name in names:
        key = _node_key(name, cfg, where)
        if key in seen:
            same = "" if seen[key] == name else f" (the same node as {seen[key]!r})"
            raise UserError(f"{where}: node {name!r} is listed twice{same}")
        seen[key] = name


def _node_key(name: Any, cfg: ModelConfig | None, where: str) -> Any:
    """(location, flat index) of a node name under `cfg`, or the name itself when no config is known."""
    if not isinstance(name, str):
        raise UserError(f"{where}: node names are strings, got {name!r}")
    try:
        if cfg is not None:
            return parse_node_name(name, cfg)
        form = _NODE_FORM.fullmatch(name)
        if form is None:
            raise UserError(f"node {name!r}: not of the form LAYER.LOCATION.INDEX")
        location_order(form["loc"])
        return name
    except UserError as e:
        raise UserError(f"{where}: {e}") from None


def _v1_score(old: dict, fitted_on: str) -> dict:
    """A schema-1 score {loss, loss_uncalibrated, accuracy, calibration} in the schema-2 form."""
    cal = old.get("calibration") or {}
    return {
        "loss_raw": old.get("loss_uncalibrated", old.get("loss")),
        "accuracy_raw": old.get("accuracy"),
        "loss_calibrated": old.get("loss"),
        "accuracy_calibrated": None,  # not recorded by schema 1
        "calibration": {"scale": cal.get("scale", 1.0), "bias": cal.get("bias", 0.0), "fitted_on": fitted_on},
    }


def upgrade_v1(circuit: dict[str, Any]) -> dict[str, Any]:
    """A schema-1 circuit in the schema-2 form. Schema 1 used the per-prompt mean loss convention, and its
    validation fitted each calibration on the very test prompts it scored (recorded as fitted_on "test")."""
    from sparsecircuits.circuits.validate import sufficiency_verdict
    from sparsecircuits.tasks.evaluate import chance_loss

    new = {**circuit, "schema": SCHEMA, "loss_convention": "mean", "upgraded_from": SCHEMA_V1}
    a = circuit.get("achieved") or {}
    new["achieved"] = {
        "split": "val",
        "loss": a.get("loss"),
        **_v1_score(a, "val"),
        "full_model": _v1_score(
            {"loss": a.get("full_model_loss"), "loss_uncalibrated": a.get("full_model_loss_uncalibrated")},
            "val",
        ),
    }
    v = circuit.get("validation")
    if isinstance(v, dict) and "sufficiency" in v:
        r = v.get("random") or {}
        new["validation"] = {
            "split": v.get("split", "test"),
            "loss_convention": "mean",
            "chance": chance_loss("mean"),
            "target_loss": circuit.get("target_loss"),
            "calibration_fitted_on": "test",
            **{
                k: _v1_score(v[k], "test")
                for k in ("sufficiency", "necessity", "resample", "full_model")
                if k in v
            },
            "random": {
                "n": r.get("n"),
                "loss_calibrated": r.get("loss"),
                "loss_calibrated_std": r.get("std"),
                "loss_raw": None,
                "accuracy_raw": None,
            },
        }
        if new["validation"]["sufficiency"]["accuracy_raw"] is not None:
            new["validation"]["verdict"] = sufficiency_verdict(
                new["validation"]["sufficiency"], circuit.get("target_loss", 0.15)
            )
    return new
