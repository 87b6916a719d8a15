"""Import of the paper authors' released models: tokenizer conversion, config and weight mapping, and
logits equal to an independent plain-torch forward written here from the authors' description."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch

from cli_helpers import run_cli
from sparsecircuits import cli
from sparsecircuits.data.tokenizer import SPLIT_PATTERN
from sparsecircuits.errors import UserError
from sparsecircuits.interop import import_openai, load_openai_tokenizer, strip_right_padding
from sparsecircuits.interop.openai_tokenizer import AUTHORS_SPLIT_PATTERN, EOT, byte_alphabet
from sparsecircuits.run import load_run

# ---- a hand-made tokenizer in the authors' data-gym format -----------------------------------------

# Byte ids in tiktoken's order: printable bytes from "!" (0x21) first, so "a" is 0x61 - 0x21 = 64.
A, B, C, D, E, F, G, H = range(64, 72)
SPACE = 220  # " " is the 33rd non-printable byte: 188 + 32, spelled "Ġ"
MERGES = [
    ("b", "c"),  # 256
    ("a", "b"),  # 257
    ("ab", "c"),  # 258 "abc"; tiktoken also reaches it from "a" + "bc"
    ("d", "e"),  # 259
    ("e", "f"),  # 260
    ("ef", "g"),  # 261
    ("d", "efg"),  # 262 "defg": whole pre-token only; the merges alone stop at de|f|g
    ("Ġ", "a"),  # 263
]
VOCAB = 256 + len(MERGES) + 1  # + <|endoftext|> (id 264)


def write_tokenizer(directory: Path, merges=MERGES, encoder_edit=None) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    alphabet = byte_alphabet()
    encoder = {ch: i for i, ch in enumerate(alphabet)}
    for left, right in merges:
        encoder[left + right] = len(encoder)
    encoder[EOT] = len(encoder)
    if encoder_edit:
        encoder_edit(encoder)
    (directory / "encoder.json").write_text(json.dumps(encoder), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (directory / "vocab.bpe").write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tinypython")
    write_tokenizer(d)
    return d


def tiktoken_bpe(piece: str, ranks: dict[str, int]) -> list[int]:
    """tiktoken's BPE on one byte-level pre-token: a vocabulary word is one token; otherwise merge the
    adjacent pair whose concatenation has the lowest id, leftmost first, until none is a token."""
    if piece in ranks:
        return [ranks[piece]]
    parts = list(piece)
    while True:
        best = None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and (best is None or r < best[0]):
                best = (r, i)
        if best is None:
            return [ranks[p] for p in parts]
        i = best[1]
        parts[i : i + 2] = [parts[i] + parts[i + 1]]


def test_hand_computed_ids(tok_dir):
    tok = load_openai_tokenizer(tok_dir)
    assert tok.get_vocab_size() == VOCAB
    assert tok.token_to_id(EOT) == VOCAB - 1
    cases = {
        "abca": [258, A],  # b+c first (256), then a+bc makes "abc": a merge vocab.bpe does not list
        "defg": [262],  # a whole pre-token in the vocabulary is one token
        "defgh": [259, F, G, H],  # inside a longer word the merges stop at de|f|g|h
        " abc": [SPACE, 258],  # bc (256) < abc (258) < Ġa (263)
        "ab<|endoftext|>": [257, VOCAB - 1],
        "!": [0],
    }
    for text, ids in cases.items():
        assert tok.encode(text).ids == ids, text
        assert tok.decode(ids, skip_special_tokens=False) == text


def test_matches_tiktoken_algorithm_on_random_text(tok_dir):
    tok = load_openai_tokenizer(tok_dir)
    ranks = {t: i for t, i in tok.get_vocab().items() if t != EOT}
    gen = torch.Generator().manual_seed(0)
    letters = "abcdefgh \n"
    for _ in range(300):
        n = int(torch.randint(1, 14, (1,), generator=gen))
        text = "".join(letters[int(i)] for i in torch.randint(0, len(letters), (n,), generator=gen))
        pieces = [p for p, _ in tok.pre_tokenizer.pre_tokenize_str(text)]
        expected = [i for p in pieces for i in tiktoken_bpe(p, ranks)]
        assert tok.encode(text).ids == expected, repr(text)
        assert tok.decode(expected) == text


def test_round_trip_any_text(tok_dir):
    tok = load_openai_tokenizer(tok_dir)
    text = "def f(x):\n    return [x, 'é', \"ünïcode\", 12345]  # ok\r\n\t\x00\x7f"
    assert tok.decode(tok.encode(text).ids) == text


def test_split_pattern_and_alphabet_are_the_authors():
    assert AUTHORS_SPLIT_PATTERN == SPLIT_PATTERN
    from tokenizers import pre_tokenizers

    alphabet = byte_alphabet()
    assert len(set(alphabet)) == 256 and set(alphabet) == set(pre_tokenizers.ByteLevel.alphabet())
    assert alphabet[0] == "!" and alphabet[SPACE] == "Ġ" and alphabet == sorted(alphabet)


def test_agrees_with_tiktoken_when_installed(tok_dir):
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    ranks = data_gym_to_mergeable_bpe_ranks(str(tok_dir / "vocab.bpe"), str(tok_dir / "encoder.json"))
    enc = tiktoken.Encoding(
        name="t", pat_str=AUTHORS_SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: VOCAB - 1}
    )
    tok = load_openai_tokenizer(tok_dir)
    for text in ["abca defgh defg  abc\n\nx = 1", "ab<|endoftext|>cd", "été 123456"]:
        assert tok.encode(text).ids == enc.encode(text, allowed_special="all")


def test_tokenizer_file_errors(tmp_path):
    write_tokenizer(tmp_path / "swap", encoder_edit=lambda e: e.update({"ab": 256, "bc": 257}))
    with pytest.raises(UserError, match="encoder.json does not match vocab.bpe.*'bc'"):
        load_openai_tokenizer(tmp_path / "swap")
    write_tokenizer(tmp_path / "extra", encoder_edit=lambda e: e.update({"zz": 300}))
    with pytest.raises(UserError, match="'zz', which vocab.bpe never makes"):
        load_openai_tokenizer(tmp_path / "extra")
    write_tokenizer(tmp_path / "nover")
    bpe = tmp_path / "nover" / "vocab.bpe"
    bpe.write_text(bpe.read_text().split("\n", 1)[1])
    with pytest.raises(UserError, match="#version"):
        load_openai_tokenizer(tmp_path / "nover")
    write_tokenizer(tmp_path / "dup", merges=MERGES + [("a", "b")])
    with pytest.raises(UserError, match="a second time"):
        load_openai_tokenizer(tmp_path / "dup")
    with pytest.raises(UserError, match="not found"):
        load_openai_tokenizer(tmp_path / "nowhere")


def test_strip_right_padding():
    assert strip_right_padding([5, 0, 7, 0, 0]) == [5, 0, 7]
    assert strip_right_padding((5, 7)) == (5, 7)
    assert strip_right_padding([0, 0]) == []
    assert strip_right_padding([3, 9, 9], pad_id=9) == [3]
    t = torch.tensor([4, 0, 2, 0, 0, 0])
    assert strip_right_padding(t).tolist() == [4, 0, 2]
    assert strip_right_padding(torch.zeros(3, dtype=torch.long)).numel() == 0


# ---- checkpoints in the authors' format, and a reference forward written from their description ----

BASE = dict(block_size=12, vocab_size=VOCAB, n_layer=2, n_head=2, d_head=4, d_model=16, d_mlp=32)


def authors_config(**kw) -> dict:
    cfg = dict(BASE, rms_norm=True, bias=True, ln_bias=False, flash=True, bigram_table_rank=None)
    cfg.update(kw)
    return cfg


def random_state_dict(c: dict, seed: int = 0, logits_bias: bool = False) -> dict[str, torch.Tensor]:
    """Random weights with the authors' key names and shapes, scaled so activations are O(1)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * scale

    V, D, T, L = c["vocab_size"], c["d_model"], c["block_size"], c["n_layer"]
    A, M, dp = c["n_head"] * c["d_head"], c.get("d_mlp") or c.get("n_mlp"), c.get("d_pos_emb")
    d_in = D + (dp or 0)
    sd = {"transformer.wte.weight": rand(V, D)}
    sd["transformer.wpe.weight"] = rand(T, dp or D) if c.get("pos") != "none" else torch.zeros(T, D)
    for l in range(L):
        p = f"transformer.h.{l}."
        sd[p + "ln_1.weight"] = 1 + rand(D, scale=0.2)
        sd[p + "ln_2.weight"] = 1 + rand(D, scale=0.2)
        if dp:
            sd[p + "ln_p1.weight"] = 1 + rand(dp, scale=0.2)
            sd[p + "ln_p2.weight"] = 1 + rand(dp, scale=0.2)
        sd[p + "attn.c_attn.weight"] = rand(3 * A, d_in, scale=d_in**-0.5)
        sd[p + "attn.c_proj.weight"] = rand(D, A, scale=A**-0.5)
        sd[p + "mlp.c_fc.weight"] = rand(M, d_in, scale=d_in**-0.5)
        sd[p + "mlp.c_proj.weight"] = rand(D, M, scale=M**-0.5)
        if c.get("bias", True):
            for name, n in (("attn.c_attn", 3 * A), ("attn.c_proj", D), ("mlp.c_fc", M), ("mlp.c_proj", D)):
                sd[p + name + ".bias"] = rand(n, scale=0.1)
        if c.get("sink"):
            sd[p + "attn.attn_imp.sink_logit"] = rand(c["n_head"])
    sd["transformer.ln_f.weight"] = 1 + rand(D, scale=0.2)
    sd["lm_head.weight"] = sd["transformer.wte.weight"] if c.get("tied_unembed", True) else rand(V, D)
    sd["final_logits_bias"] = rand(V) if logits_bias else torch.zeros(V)
    if c.get("enable_bigram_table"):
        sd["bigram_table"] = rand(V, V)
    return sd


def write_checkpoint(directory: Path, c: dict, sd: dict[str, torch.Tensor], tok: Path | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "beeg_config.json").write_text(json.dumps({k: v for k, v in c.items() if k != "pos"}))
    torch.save(sd, directory / "final_model.pt")
    if tok is not None:
        for name in ("vocab.bpe", "encoder.json"):
            (directory / name).write_bytes((tok / name).read_bytes())
    return directory


def reference_logits(c: dict, sd: dict[str, torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
    """The authors' forward, straight from their description; shares no code with our GPT."""
    eps = torch.finfo(torch.float32).eps  # torch.nn.RMSNorm's default for float32
    afrac, locs = c.get("afrac"), c.get("afrac_loctypes", "attn_in,attn_out,mlp_in,mlp_out").split(",")
    H, dh = c["n_head"], c["d_head"]
    B, T = idx.shape

    def rmsnorm(x, w):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w

    def topk(x, loc):
        if afrac is None or loc not in locs:
            return x
        k = int(afrac * x.shape[-1])
        order = x.abs().argsort(dim=-1, descending=True)
        keep = torch.zeros_like(x, dtype=torch.bool).scatter(-1, order[..., :k], True)
        return torch.where(keep, x, torch.zeros_like(x))

    def linear(x, name):
        w = sd[name + ".weight"]
        return x @ w.T + (sd[name + ".bias"] if name + ".bias" in sd else 0)

    def act(x):
        if c.get("activation_type") == "relu":
            return torch.relu(x)
        return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))  # exact GELU

    def resid(x):
        return torch.relu(x) if c.get("residual_activation_type") == "relu" else x

    pos = sd["transformer.wpe.weight"][:T]
    x = sd["transformer.wte.weight"][idx]
    cat = c.get("d_pos_emb") is not None
    if not cat:
        x = x + pos
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for l in range(c["n_layer"]):
        p = f"transformer.h.{l}."

        def read(x, ln, ln_p, p=p):
            h = rmsnorm(x, sd[p + ln])
            return torch.cat([h, rmsnorm(pos, sd[p + ln_p]).expand(B, T, -1)], -1) if cat else h

        h = topk(read(x, "ln_1.weight", "ln_p1.weight"), "attn_in")
        q, k, v = linear(h, p + "attn.c_attn").split(H * dh, dim=-1)
        q, k, v = (
            topk(t, n).view(B, T, H, dh).transpose(1, 2)
            for t, n in ((q, "attn_q"), (k, "attn_k"), (v, "attn_v"))
        )
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(dh)
        scores = scores.masked_fill(~causal, float("-inf"))
        if c.get("sink"):  # a prepended slot: key 0 with a learned logit per head, value 0
            b = sd[p + "attn.attn_imp.sink_logit"].view(1, H, 1, 1)
            top = torch.maximum(scores.amax(-1, keepdim=True), b)
            e = torch.exp(scores - top)
            att = e / (torch.exp(b - top) + e.sum(-1, keepdim=True))
        else:
            att = torch.softmax(scores, dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, H * dh)
        x = resid(x + topk(linear(y, p + "attn.c_proj"), "attn_out"))
        h = topk(read(x, "ln_2.weight", "ln_p2.weight"), "mlp_in")
        a = topk(act(linear(h, p + "mlp.c_fc")), "mlp_neuron")
        x = resid(x + topk(linear(a, p + "mlp.c_proj"), "mlp_out"))
    logits = rmsnorm(x, sd["transformer.ln_f.weight"]) @ sd["lm_head.weight"].T + sd["final_logits_bias"]
    if c.get("enable_bigram_table"):
        logits = logits + sd["bigram_table"][idx]
    return logits


AFRAC_SETTINGS = [
    {},  # no AbsTopK
    dict(afrac=0.5, afrac_loctypes="attn_in,attn_q,attn_k,attn_v,attn_out,mlp_in,mlp_neuron,mlp_out"),
    dict(afrac=0.25, afrac_loctypes="attn_in,mlp_neuron"),
    dict(afrac=0.5, afrac_loctypes="attn_q,attn_k,attn_v,attn_out,mlp_out"),
]
COMBOS = list(itertools.product([False, True], [False, True], ["none", "add", "concat"], [False, True]))


def combo_config(i: int, sink: bool, bigram: bool, pos: str, tied: bool) -> dict:
    c = authors_config(sink=sink, enable_bigram_table=bigram, tied_unembed=tied, pos=pos)
    c.update(AFRAC_SETTINGS[i % len(AFRAC_SETTINGS)])
    if pos == "concat":
        c.update(d_pos_emb=4, sinusoidal_cat_pos_emb=i % 2 == 0)
    c["residual_activation_type"] = "relu" if i % 2 else "identity"
    c["activation_type"] = "relu" if i % 3 == 0 else "gelu"
    c["bias"] = i % 4 != 3
    c["learnable_bigram_table"] = bigram and i % 5 == 0
    if i % 7 == 0:  # older files name the MLP width n_mlp
        c["n_mlp"] = c.pop("d_mlp")
    return c


def tokens(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (3, BASE["block_size"]), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "i", range(len(COMBOS)), ids=lambda i: "sink{}-bigram{}-{}-tied{}".format(*COMBOS[i])
)
def test_imported_logits_match_reference(i, tmp_path, tok_dir):
    sink, bigram, pos, tied = COMBOS[i]
    c = combo_config(i, sink, bigram, pos, tied)
    sd = random_state_dict(c, seed=i, logits_bias=i % 5 == 0)
    src = write_checkpoint(tmp_path / "csp_test", c, sd, tok=tok_dir)
    import_openai(src, tmp_path / "run")
    run = load_run(tmp_path / "run")
    m = run.config["model"]
    assert (m["sink"], m["bigram_table"], m["pos_emb"], m["tied_unembed"]) == (sink, bigram, pos, tied)
    assert m["final_logits_bias"] == (i % 5 == 0) and m["residual_relu"] == (i % 2 == 1)
    idx = tokens(i)
    with torch.no_grad():
        ours = run.model(idx)
        ref = reference_logits(c, sd, idx)
    assert ours.dtype == torch.float32
    assert (ours - ref).abs().max().item() < 1e-5
    assert run.tokenizer.encode("abca").ids == [258, A]


def test_imported_run_directory(tmp_path, tok_dir):
    c = authors_config(tied_unembed=True, sink=True, **AFRAC_SETTINGS[1])
    src = write_checkpoint(tmp_path / "models" / "csp_yolo9", c, random_state_dict(c))
    write_tokenizer(tmp_path / "models" / "tinypython")  # found beside the model folder
    import_openai(src, tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        ".sparsecircuits.json",  # the marker that lets --force recognise the project's own output
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["train"] is None and "not available" in config["data"]["note"]
    assert config["source"]["format"] == "openai-circuit-sparsity" and config["source"]["name"] == "csp_yolo9"
    assert config["source"]["beeg_config"]["sink"] is True
    m = config["model"]
    assert m["afrac"] == 0.5 and len(m["afrac_locs"]) == 8 and m["pos_emb"] == "add"
    assert m["norm_eps"] == torch.finfo(torch.float32).eps
    from safetensors.torch import load_file

    names = set(load_file(str(tmp_path / "run" / "model.safetensors")))
    assert "lm_head.weight" not in names and "transformer.wte.weight" in names  # tied: stored once
    assert "final_logits_bias" not in names  # all zeros in the source


# ---- bad inputs --------------------------------------------------------------------------------------


def good_source(tmp_path: Path, tok_dir: Path, **kw) -> tuple[Path, dict, dict]:
    c = authors_config(**kw)
    sd = random_state_dict(c)
    return write_checkpoint(tmp_path / "src", c, sd, tok=tok_dir), c, sd


def test_truncated_weights(tmp_path, tok_dir):
    src, _, _ = good_source(tmp_path, tok_dir)
    data = (src / "final_model.pt").read_bytes()
    (src / "final_model.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="final_model.pt is corrupt or truncated"):
        import_openai(src, tmp_path / "run")
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".run*"))  # no staging left behind


def test_wrong_key(tmp_path, tok_dir):
    c = authors_config()
    sd = random_state_dict(c)
    sd["transformer.h.1.mlp.c_fc.weights"] = sd.pop("transformer.h.1.mlp.c_fc.weight")
    src = write_checkpoint(tmp_path / "src", c, sd, tok=tok_dir)
    with pytest.raises(
        UserError, match=r"missing transformer\.h\.1\.mlp\.c_fc\.weight; unexpected .*c_fc\.weights"
    ):
        import_openai(src, tmp_path / "run")


def test_config_does_not_match_weights(tmp_path, tok_dir):
    c = authors_config()
    sd = random_state_dict(c)
    write_checkpoint(tmp_path / "a", dict(c, d_mlp=64), sd, tok=tok_dir)
    with pytest.raises(UserError, match=r"c_fc.weight has shape \[32, 16\], the config implies \[64, 16\]"):
        import_openai(tmp_path / "a", tmp_path / "run")
    write_checkpoint(tmp_path / "b", dict(c, sink=True), sd, tok=tok_dir)
    with pytest.raises(UserError, match=r"missing transformer\.h\.0\.attn\.attn_imp\.sink_logit"):
        import_openai(tmp_path / "b", tmp_path / "run")
    write_checkpoint(tmp_path / "c", dict(c, bias=False), sd, tok=tok_dir)
    with pytest.raises(UserError, match=r"unexpected transformer\.h\.0\.attn\.c_attn\.bias"):
        import_openai(tmp_path / "c", tmp_path / "run")
    untied = {**sd, "lm_head.weight": sd["lm_head.weight"] + 1}
    write_checkpoint(tmp_path / "d", dict(c, tied_unembed=True), untied, tok=tok_dir)
    with pytest.raises(UserError, match="lm_head.weight differs from transformer.wte.weight"):
        import_openai(tmp_path / "d", tmp_path / "run")


@pytest.mark.parametrize(
    "edit, message",
    [
        (dict(rms_norm=False), "rms_norm is false"),
        (dict(afrac=0.5, afrac_loctypes="attn_in,resid_post_mlp"), "resid_post_mlp"),
        (dict(afrac=0.5, afrac_loctypes="attn_in,mlp_hidden"), "unknown location.*mlp_hidden"),
        (dict(use_tied_aux_matrix=True), "use_tied_aux_matrix"),
        (dict(new_knob=3), "unknown key.*new_knob"),
        (dict(residual_activation_type="gelu"), "residual_activation_type"),
        (dict(n_layer="2"), "n_layer must be a positive integer"),
        (dict(afrac=1.5, afrac_loctypes="attn_in"), "afrac must be in"),
    ],
)
def test_unrepresentable_config(edit, message, tmp_path, tok_dir):
    c = authors_config()
    write_checkpoint(tmp_path / "src", dict(c, **edit), random_state_dict(c), tok=tok_dir)
    with pytest.raises(UserError, match=message):
        import_openai(tmp_path / "src", tmp_path / "run")


class NotATensor:
    pass


def test_refuses_pickled_objects(tmp_path, tok_dir):
    src, c, sd = good_source(tmp_path, tok_dir)
    torch.save({**sd, "extra": NotATensor()}, src / "final_model.pt")
    with pytest.raises(UserError, match="refusing to unpickle"):
        import_openai(src, tmp_path / "run")


def test_tokenizer_must_fit_the_model(tmp_path, tok_dir):
    c = authors_config(vocab_size=300)
    write_checkpoint(tmp_path / "src", c, random_state_dict(c), tok=tok_dir)
    with pytest.raises(UserError, match="has 265 ids but beeg_config.json says vocab_size 300"):
        import_openai(tmp_path / "src", tmp_path / "run")


def test_missing_tokenizer(tmp_path):
    c = authors_config()
    write_checkpoint(tmp_path / "src", c, random_state_dict(c))
    with pytest.raises(UserError, match="use --tokenizer DIR"):
        import_openai(tmp_path / "src", tmp_path / "run")


def test_cli(tmp_path, tok_dir, monkeypatch, capsys):
    monkeypatch.setitem(cli.COMMANDS, "import-openai", ("sparsecircuits.interop.commands", "import_openai"))
    src, _, _ = good_source(tmp_path, tok_dir)
    out = tmp_path / "run"
    assert run_cli(["import-openai", "--src", str(src), "--out", str(out)]) == 0
    assert load_run(out).model.cfg.vocab_size == VOCAB
    assert run_cli(["import-openai", "--src", str(src), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert run_cli(["import-openai", "--src", str(src), "--out", str(out), "--force"]) == 0
    assert run_cli(["import-openai", "--src", str(tmp_path / "nope"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: source directory not found")
