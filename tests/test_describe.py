"""Node descriptions and labels from data (circuits/describe.py) and `explain` (circuits/explain.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models

from cli_helpers import run_cli
from sparsecircuits.circuits.circuit_file import SCHEMA, read_circuit, write_circuit
from sparsecircuits.circuits.describe import add_descriptions, describe_nodes, token_class
from sparsecircuits.circuits.edges import circuit_edges
from sparsecircuits.circuits.explain import explain_markdown, explain_text, strongest_path
from sparsecircuits.circuits.explain import load as load_explained
from sparsecircuits.circuits.nodes import names_to_nodes
from sparsecircuits.circuits.scoring import PromptSet
from sparsecircuits.data.shards import write_tokens
from test_prune import A, B, X, Y, planted_model, small_model

WORDS = ['"', "(", ")", "'", "x", "if", " ", "\n", "1", "+", ",", "#c"]  # ids 0..11, then filler words


def word_tokenizer(vocab_size: int) -> Tokenizer:
    """A word-level tokenizer whose ids 0..11 are WORDS and the rest `w12`, `w13`, ..."""
    words = WORDS + [f"w{i}" for i in range(len(WORDS), vocab_size)]
    return Tokenizer(models.WordLevel({w: i for i, w in enumerate(words[:vocab_size])}, unk_token="x"))


QUOTE, OPEN, CLOSE = 0, 1, 2


def circuit_of(model, names: list[str], task: str = "single_double_quote") -> dict:
    """A circuit dict of the schema for `names` in `model` (edges from its weights)."""
    graph = circuit_edges(model.state_dict(), model.cfg, names_to_nodes(names, model.cfg)).to_json()
    return {
        "schema": SCHEMA,
        "model": {"path": "nowhere", "config": model.cfg.to_dict()},
        "task": {"name": task},
        "ablation": "mean",
        "target_loss": 0.15,
        "achieved": {},
        "nodes": names,
        "node_info": {n: {"tau": 1.0, "ablation_effect": 0.5} for n in names},
        **graph,
    }


def quote_model():
    """One layer, no sparsity; residual channel 0 holds 5.0 on the token '"' and 0 on every other token and
    position, so the attention read `0.attn.act_in.0` fires on '"' and nowhere else."""
    model = small_model(n_layer=1, afrac=1.0)
    with torch.no_grad():
        model.transformer.wte.weight[:, 0] = 0.0
        model.transformer.wte.weight[QUOTE, 0] = 5.0
        if "wpe" in model.transformer:
            model.transformer.wpe.weight[:, 0] = 0.0
    return model


def quote_stream(n: int, seed: int = 0) -> np.ndarray:
    """Random filler tokens, with '"' now and then, always right after '('."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(4, 32, n)
    at = rng.choice(np.arange(1, n), n // 40, replace=False)
    ids[at - 1], ids[at] = OPEN, QUOTE
    return ids


def quote_prompts(n_pairs: int, seed: int = 0) -> PromptSet:
    """Pairs that differ only in their last token: '"' (positive prompt) or "'" (negative)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(4, 32, (n_pairs, 6), generator=g)
    tokens = base.repeat_interleave(2, 0)
    tokens[0::2, -1], tokens[1::2, -1] = QUOTE, 3
    n = 2 * n_pairs
    sign = torch.tensor([1.0, -1.0] * n_pairs)
    correct = torch.where(sign > 0, CLOSE, 4)
    wrong = torch.where(sign > 0, 4, CLOSE)
    return PromptSet(tokens, torch.full((n,), 5), correct, wrong, sign)


def test_token_classes():
    cases = {
        '"': "quote",
        '("': "quote + symbols",
        " (": "open bracket",
        ")": "close bracket",
        " if": "keyword",
        " x_1": "identifier",
        "_": "identifier",
        "\n    ": "newline",
        "   ": "whitespace",
        " 42": "number",
        " +=": "operator",
        ", ": "punctuation",
        "#": "comment",
        "<|endoftext|>": "end of text",
    }
    assert {text: token_class(text) for text in cases} == cases


def test_label_names_the_token_a_node_fires_on(tmp_path):
    model = quote_model()
    write_tokens(tmp_path / "val.bin", quote_stream(4000))
    names = ["0.attn.act_in.0", "0.attn.act_in.1", "0.attn.q.3", "0.attn.v.10", "0.attn.resid_delta.2"]
    circuit = circuit_of(model, names)
    prompts = quote_prompts(16)
    described = describe_nodes(model, word_tokenizer(32), circuit, tmp_path / "val.bin", prompts, 16, 4)
    assert set(described) == set(names)
    quote = described["0.attn.act_in.0"]
    top = quote["description"]["pretraining"]["top"]
    assert top["token"] == {"text": '"', "share": 1.0}
    assert top["after"] == {"text": "(", "share": 1.0}  # '"' always follows '(' in the stream
    assert quote["description"]["pretraining"]["top_tokens"][0]["text"] == '"'
    assert quote["label"].startswith("fires on '\"' after '('")
    # the positive prompts end in '"', the negative ones in "'": named by that cue, higher on the first
    task = quote["description"]["task"]
    assert task["kinds"] == {"positive": "'\"' prompts", "negative": '"\'" prompts'}
    assert task["last"]["diff"] > 0 and "higher on '\"' prompts" in quote["label"]
    # the q channel carries its head's attention from the last position; masses are shares of one softmax
    att = described["0.attn.q.3"]["description"]["attention"]
    assert att["head"] == 0 and 0 < sum(t["mass"] for t in att["positive"]["tokens"]) <= 1.0001
    # a value channel: what head 1 (d_head 8) carries into the last position, by hand from the pattern
    with torch.no_grad():
        cache = model.run_with_cache(prompts.tokens, ["0.attn.v", "0.attn.pattern"])
    weights = cache["0.attn.pattern"][torch.arange(32), 1, prompts.last]  # [N, T]
    by_hand = (weights * cache["0.attn.v"][:, :, 10]).sum(1)
    moved = described["0.attn.v.10"]["description"]["task"]["moved"]
    assert moved["positive"] == pytest.approx(by_hand[prompts.sign > 0].mean().item(), rel=1e-3, abs=1e-6)
    assert moved["negative"] == pytest.approx(by_hand[prompts.sign < 0].mean().item(), rel=1e-3, abs=1e-6)
    logit = described["0.attn.resid_delta.2"]["description"]["logit"]
    assert logit["toward"] == ")" and logit["feeds_unembedding"]


def test_a_position_channel_is_labelled_by_position_and_explained_as_one(tmp_path):
    """With concatenated positions, act_in index d_model + c is position channel c: labelled by where along
    the context it is largest (set by hand here), and counted apart from the residual reads by explain."""
    model = small_model(n_layer=1, afrac=1.0, pos_emb="concat", d_pos_emb=4)  # d_model 16: channel 18 is c 2
    with torch.no_grad():
        model.transformer.wpe.weight.normal_(0, 0.1)
        model.transformer.wpe.weight[:, 2] = -1.0
        model.transformer.wpe.weight[11, 2] = 3.0  # largest at position 11
        model.transformer.wpe.weight[4, 2] = -3.0  # smallest at position 4
    write_tokens(tmp_path / "val.bin", quote_stream(2000))
    names = ["0.attn.act_in.0", "0.attn.act_in.18", "0.attn.q.3"]
    circuit = circuit_of(model, names)
    described = describe_nodes(
        model, word_tokenizer(32), circuit, tmp_path / "val.bin", quote_prompts(8), 8, 4
    )
    position = described["0.attn.act_in.18"]["description"]["position"]
    assert (position["channel"], position["largest_at"], position["smallest_at"]) == (2, 11, 4)
    assert described["0.attn.act_in.18"]["label"].startswith("position channel 2 (largest at position 11")
    assert "position" not in described["0.attn.act_in.0"]["description"]
    explained = explain_text(add_descriptions(circuit, described, {}))
    assert (
        "reads 1 residual channel (1 fed by no circuit write, i.e. the token embedding) and 1 position channel (2)"
        in (explained)
    )


def test_descriptions_are_stored_beside_the_other_node_info(tmp_path):
    model = quote_model()
    write_tokens(tmp_path / "val.bin", quote_stream(2000))
    circuit = circuit_of(model, ["0.attn.act_in.0", "0.mlp.post_act.5"])
    described = describe_nodes(
        model, word_tokenizer(32), circuit, tmp_path / "val.bin", quote_prompts(8), n_windows=8, batch_size=4
    )
    write_circuit(tmp_path / "c.circuit.json", add_descriptions(circuit, described, {"windows": 8}))
    back = read_circuit(tmp_path / "c.circuit.json")
    info = back["node_info"]["0.attn.act_in.0"]
    assert info["tau"] == 1.0 and info["ablation_effect"] == 0.5  # kept
    assert info["label"] == described["0.attn.act_in.0"]["label"]
    assert info["description"]["pretraining"]["top"]["token"]["text"] == '"'
    assert back["descriptions"]["windows"] == 8


PLANTED = ["0.mlp.act_in.0", "0.mlp.post_act.0", "0.mlp.post_act.1", "0.mlp.resid_delta.1"]


def test_explain_lists_the_planted_circuit():
    model = planted_model()
    circuit = circuit_of(model, PLANTED)
    text = explain_text(circuit)
    for name in PLANTED:
        assert f"    {name}" in text
    # the planted weights, signed: fc[0, 0] = 4, fc[1, 0] = -4, proj[1, 0] = 3, proj[1, 1] = -3
    lines = text.splitlines()
    inputs = {
        lines[i - 1].split()[0]: line.strip() for i, line in enumerate(lines) if line.strip().startswith("<-")
    }
    assert inputs == {
        "0.mlp.post_act.0": "<- 0.mlp.act_in.0 +4",
        "0.mlp.post_act.1": "<- 0.mlp.act_in.0 -4",
        "0.mlp.resid_delta.1": "<- 0.mlp.post_act.0 +3, 0.mlp.post_act.1 -3",
    }
    assert "keeps 4 nodes and 4 edges (after node pruning;" in text
    circuit["stages"] = {"bisection": {"nodes": 9}, "cleanup": {"nodes": 4}}  # the counts name their stage
    assert "keeps 4 nodes and 4 edges (after clean-up;" in explain_text(circuit)
    assert "Layer 0 MLP keeps 2 neurons" in text
    assert "no descriptions yet" in text
    path = [name for name, _, _ in strongest_path(load_explained(circuit))]
    assert path[0] == "0.mlp.act_in.0" and path[-1] == "0.mlp.resid_delta.1" and len(path) == 3


def test_explain_uses_the_labels_and_markdown_holds_the_svg(tmp_path):
    model = planted_model()  # vocab 8: ids 0..7
    write_tokens(tmp_path / "val.bin", np.random.default_rng(0).integers(0, 8, 3000))
    circuit = circuit_of(model, PLANTED)
    g = torch.Generator().manual_seed(0)
    base = torch.randint(5, 8, (8, 6), generator=g).repeat_interleave(2, 0)
    base[0::2, -1], base[1::2, -1] = X, Y  # the planted cue tokens; the answers are A and B
    sign = torch.tensor([1.0, -1.0] * 8)
    prompts = PromptSet(
        base, torch.full((16,), 5), torch.where(sign > 0, A, B), torch.where(sign > 0, B, A), sign
    )
    described = describe_nodes(model, word_tokenizer(8), circuit, tmp_path / "val.bin", prompts, 16, 8)
    circuit = add_descriptions(circuit, described, {})
    neuron = described["0.mlp.post_act.0"]
    assert "higher on '(' prompts" in neuron["label"]  # the planted cue X = 1 is the word '('
    assert "higher on ')' prompts" in described["0.mlp.post_act.1"]["label"]  # its sign twin reads Y = 2
    text = explain_text(circuit)
    assert neuron["label"] in text and "no descriptions yet" not in text
    assert "1 residual write channel reaches the unembedding" in text and "Strongest weighted path" in text
    md = explain_markdown(circuit)
    assert md.startswith("# single_double_quote circuit")
    start, end = md.index("<svg"), md.index("</svg>")
    assert start < end and "0.mlp.post_act.1" in md[start:end]
    assert "| `0.mlp.resid_delta.1` |" in md and "`0.mlp.post_act.0` +3" in md


def test_explain_command(tmp_path, capsys):
    model = planted_model()
    path = tmp_path / "c.circuit.json"
    write_circuit(path, circuit_of(model, PLANTED))
    assert run_cli(["explain", str(path)]) == 0
    assert "0.mlp.resid_delta.1" in capsys.readouterr().out
    out = tmp_path / "c.md"
    assert run_cli(["explain", str(path), "--out", str(out)]) == 0
    assert "<svg" in out.read_text()
    assert run_cli(["explain", str(path), "--out", str(out)]) == 2  # exists: needs --force
    assert "already exists" in capsys.readouterr().err
    assert run_cli(["explain", str(path), "--out", str(out), "--format", "text", "--force"]) == 0
    assert "<svg" not in out.read_text()


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "circuit file not found"),
        ("no nodes", "non-empty list of node names"),
        ("no model", "model directory not found"),
    ],
)
def test_describe_and_explain_errors(tmp_path, capsys, case, message):
    path = tmp_path / "c.circuit.json"
    if case != "missing":
        circuit = circuit_of(planted_model(), PLANTED)
        if case == "no nodes":
            circuit["nodes"] = []
        path.write_text(json.dumps(circuit))
    assert run_cli(["describe", "--circuit", str(path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    if case != "no model":
        assert run_cli(["explain", str(path)]) == 2
        assert message in capsys.readouterr().err
