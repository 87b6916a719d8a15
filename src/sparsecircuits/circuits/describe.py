"""Node descriptions from data, and a short label per circuit node (docs/circuits.md, "Node descriptions").

For every node of a circuit, measured on the full (unpruned) model through its one forward (`run_with_cache`):

- pretraining: over N windows of the dataset's val.bin, the positions where the node is most positive (top)
  and most negative (bottom), with the token and a little left context; how much of the top/bottom share one
  token, one previous token, one token class (`token_class`: quote, open bracket, keyword, ...); the tokens
  with the highest and lowest mean activation; how often the node is nonzero;
- task: the mean activation at the last position of the task's positive and negative prompts (sign +1 and
  -1 of the PromptSet), their difference and its size in pooled standard deviations (and the same over all
  positions); the two prompt kinds are named by the token where a pair's prompts differ (the cue);
- attention (query, key and value channels): what the node's head attends to from the last position, per
  prompt kind (attention mass per attended token);
- logit (residual writes): the direct weight of the channel on the logit difference A - B through the final
  norm's gain (`ln_f.weight[c] * (U[A, c] - U[B, c])`, ignoring the norm's scale), and that weight times
  the task difference; `feeds_unembedding` when no later circuit read takes the channel.

`label` turns the evidence into a phrase such as `fires on '"' after '('; higher on '("' prompts`; it says
only what a threshold on the evidence supports (SHARE of the top examples, EFFECT standard deviations).
"""

from __future__ import annotations

import datetime as dt
import keyword
import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sparsecircuits.circuits.nodes import parse_node_name, position_channel
from sparsecircuits.circuits.scoring import PromptSet
from sparsecircuits.data.shards import iter_eval_batches
from sparsecircuits.data.tokenizer import EOT
from sparsecircuits.errors import UserError
from sparsecircuits.model.locations import HEAD_CHANNEL, RESIDUAL_WRITE, node_location

TOP_K = 32  # pretraining positions kept per node, each side
SHOWN = 5  # examples and tokens stored per side
CONTEXT = 4  # tokens of left context stored with an example
MIN_COUNT = 3  # occurrences a token needs before its mean activation is ranked
SHARE = 0.5  # share of the top examples one token / class must have to be named in the label
EFFECT = 0.5  # |difference| in pooled standard deviations for a task difference to be named
ATTEND_SHOWN = 3
MAX_EFFECT = 1000.0
ATTEND_MIN = 0.2  # attention mass the top attended token needs to be named in the label

Decode = Callable[[list[int]], str]

# ---- token classes ---------------------------------------------------------------------------------------

QUOTES, OPENING, CLOSING = set("\"'`"), set("([{"), set(")]}")
OPERATORS, PUNCTUATION = set("+-*/%=<>!&|^~@"), set(",.:;\\")
SYMBOLS = QUOTES | OPENING | CLOSING | OPERATORS | PUNCTUATION
TOKEN_CLASSES = (
    "end of text",
    "newline",
    "whitespace",
    "keyword",
    "identifier",
    "number",
    "quote",
    "quote + symbols",
    "open bracket",
    "close bracket",
    "brackets",
    "operator",
    "punctuation",
    "symbols",
    "comment",
    "other",
)


def token_class(text: str) -> str:
    """The class of a decoded token's text, one of TOKEN_CLASSES (surrounding whitespace ignored).

    '"' -> quote, '("' -> quote + symbols, ' (' -> open bracket, ' if' -> keyword, ' x' -> identifier,
    '\\n    ' -> newline, ' 42' -> number, ' +=' -> operator, ', ' -> punctuation, '#' -> comment."""
    s = text.strip()
    if text == EOT:
        return "end of text"
    if not s:
        return "newline" if "\n" in text else "whitespace"
    if keyword.iskeyword(s):
        return "keyword"
    if s.isidentifier():
        return "identifier"
    if s.replace(".", "", 1).replace("_", "").isdigit():
        return "number"
    if s.startswith("#"):
        return "comment"
    chars = set(s)
    for name, allowed in (
        ("quote", QUOTES),
        ("open bracket", OPENING),
        ("close bracket", CLOSING),
        ("brackets", OPENING | CLOSING),
        ("operator", OPERATORS),
        ("punctuation", PUNCTUATION),
    ):
        if chars <= allowed:
            return name
    if chars <= SYMBOLS:
        return "quote + symbols" if chars & QUOTES else "symbols"
    return "other"


def show(text: str) -> str:
    """A token's text for people: Python's repr ('"', "'", '\\n', ' if'); a run of spaces as `11 spaces`."""
    if len(text) > 3 and text == " " * len(text):
        return f"{len(text)} spaces"
    return repr(text)


def decoder(tokenizer: Any) -> Decode:
    """ids -> text with special tokens kept (a `tokenizers.Tokenizer`)."""
    return lambda ids: tokenizer.decode(list(ids), skip_special_tokens=False)


def vocab_texts(decode: Decode, vocab_size: int) -> list[str]:
    """The decoded text of every token id."""
    return [decode([i]) for i in range(vocab_size)]


# ---- which nodes --------------------------------------------------------------------------------------


@dataclass
class NodeColumns:
    """The circuit's nodes as the columns of one [.., n] activation tensor, grouped by location."""

    names: list[str]  # column order (forward order of locations, then index)
    groups: list[
        tuple[str, Tensor]
    ]  # (location hook name, flat indices [n_loc]) whose concatenation is `names`
    locations: list[str]  # per column, the per-layer location ("attn.q")
    layers: list[int]
    indices: list[int]

    def gather(self, cache: dict[str, Tensor]) -> Tensor:
        """The node activations [B, T, n] (float32) from a run_with_cache result."""
        return torch.cat([cache[loc][..., idx.to(cache[loc].device)] for loc, idx in self.groups], -1).float()


def node_columns(names: Iterable[str], cfg: Any, hook_order: list[str]) -> NodeColumns:
    """Columns of the named nodes (either name form); an unknown node is a UserError."""
    by_loc: dict[str, list[tuple[int, str]]] = {}
    for name in names:
        loc, index = parse_node_name(name, cfg)
        by_loc.setdefault(loc, []).append((index, name))
    rank = {h: i for i, h in enumerate(hook_order)}
    cols = NodeColumns([], [], [], [], [])
    for loc in sorted(by_loc, key=rank.__getitem__):
        members = sorted(by_loc[loc])
        cols.groups.append((loc, torch.tensor([i for i, _ in members], dtype=torch.long)))
        layer, _, hook = loc.partition(".")
        for index, name in members:
            cols.names.append(name)
            cols.locations.append(hook)
            cols.layers.append(int(layer))
            cols.indices.append(index)
    return cols


def _last_hook(names: Iterable[str], hook_order: list[str]) -> str:
    rank = {h: i for i, h in enumerate(hook_order)}
    return max(names, key=rank.__getitem__)


# ---- pretraining windows ---------------------------------------------------------------------------------


@dataclass
class PretrainingStats:
    """What `pretraining_stats` measured. n nodes, K kept positions per side, V tokens in the vocabulary."""

    tokens: Tensor  # [W, T] the windows read
    top_values: Tensor  # [K, n] largest activations, descending
    top_positions: Tensor  # [K, n] flat positions into tokens
    bottom_values: Tensor  # [K, n] smallest activations, ascending
    bottom_positions: Tensor  # [K, n]
    token_sums: Tensor  # [V, n] sum of the activation over positions holding each token
    token_counts: Tensor  # [V]
    total: Tensor  # [n] sum over all positions
    total_sq: Tensor  # [n]
    active: Tensor  # [n] positions with a nonzero activation
    n_positions: int

    def __post_init__(self) -> None:
        self.flat_tokens: list[int] = self.tokens.reshape(-1).tolist()  # fast lookups per example


def _merge(
    values: Tensor, positions: Tensor, new: Tensor, new_pos: Tensor, largest: bool
) -> tuple[Tensor, Tensor]:
    """Keep the TOP_K largest (or smallest) of the kept [K, n] and the new [P, n] values, with positions."""
    v = torch.cat([values, new])
    p = torch.cat([positions, new_pos.unsqueeze(1).expand_as(new)])
    k = min(TOP_K, v.shape[0])
    kept, rows = v.topk(k, dim=0, largest=largest)
    return kept, p.gather(0, rows)


@torch.no_grad()
def pretraining_stats(
    model: Any,
    cols: NodeColumns,
    tokens_path: str | Path,
    n_windows: int,
    batch_size: int = 32,
    progress: bool = False,
) -> PretrainingStats:
    """Run `n_windows` evenly spread windows of n_ctx tokens from `tokens_path` and keep, per node, its TOP_K
    largest and smallest activations (the first position of a window, without context, is left out),
    per-token sums and counts, and overall moments."""
    from tqdm import tqdm

    n, V, T = len(cols.names), model.cfg.vocab_size, model.cfg.n_ctx
    device = next(model.parameters()).device
    locs = [loc for loc, _ in cols.groups]
    stop = _last_hook(locs, model.hook_names())
    n_batches = max(1, math.ceil(n_windows / batch_size))
    empty = torch.zeros(0, n, device=device)
    no_pos = torch.zeros(0, n, dtype=torch.long, device=device)
    s = dict(tv=empty, tp=no_pos, bv=empty, bp=no_pos)
    sums, counts = torch.zeros(V, n, device=device), torch.zeros(V, device=device)
    total, total_sq, active = (torch.zeros(n, device=device) for _ in range(3))
    seen: list[Tensor] = []
    batches = iter_eval_batches(tokens_path, T, batch_size, n_batches)
    bar = tqdm(
        batches, total=n_batches, desc="pretraining windows", file=None, disable=not progress, leave=False
    )
    for batch in bar:
        x = batch[:, :-1].to(device)
        acts = cols.gather(model.run_with_cache(x, locs, stop_at=stop))  # [B, T, n]
        offset = sum(len(w) for w in seen) * x.shape[1]
        seen.append(x.cpu())
        flat, ids = acts.reshape(-1, n), x.reshape(-1)
        pos = torch.arange(offset, offset + flat.shape[0], device=device)
        later = (pos - offset) % x.shape[1] > 0  # a window's first token has no context: not an example
        s["tv"], s["tp"] = _merge(s["tv"], s["tp"], flat[later], pos[later], largest=True)
        s["bv"], s["bp"] = _merge(s["bv"], s["bp"], flat[later], pos[later], largest=False)
        sums.index_add_(0, ids, flat)
        counts += torch.bincount(ids, minlength=V).float()
        total += flat.sum(0)
        total_sq += flat.square().sum(0)
        active += (flat != 0).sum(0)
    if not seen:
        raise UserError(f"{tokens_path} has fewer tokens than one window of {T + 1}")
    tokens = torch.cat(seen)  # [W, T]; W may exceed n_windows by less than a batch
    return PretrainingStats(
        tokens, s["tv"].cpu(), s["tp"].cpu(), s["bv"].cpu(), s["bp"].cpu(), sums.cpu(), counts.cpu(),
        total.cpu(), total_sq.cpu(), active.cpu(), tokens.numel(),
    )  # fmt: skip


def _mode(items: list[Any]) -> tuple[Any, float]:
    """The most common item and its share (ties: the first seen)."""
    if not items:
        return None, 0.0
    item, n = Counter(items).most_common(1)[0]
    return item, n / len(items)


def _side(stats: PretrainingStats, j: int, top: bool, texts: list[str], decode: Decode) -> dict[str, Any]:
    """Evidence of one side (top or bottom) of node column j: examples, shared token, previous token, class."""
    values = (stats.top_values if top else stats.bottom_values)[:, j].tolist()
    positions = (stats.top_positions if top else stats.bottom_positions)[:, j].tolist()
    flat, T = stats.flat_tokens, stats.tokens.shape[1]
    kept = [(v, p) for v, p in zip(values, positions) if v != 0]
    ids = [flat[p] for _, p in kept]
    token, token_share = _mode(ids)
    prev = [flat[p - 1] for (_, p), i in zip(kept, ids) if i == token]
    after, after_share = _mode(prev)
    cls, cls_share = _mode([token_class(texts[i]) for i in ids])
    examples = []
    for v, p in kept[:SHOWN]:
        w, t = divmod(p, T)
        left = stats.tokens[w, max(0, t - CONTEXT) : t].tolist()
        examples.append({"token": texts[flat[p]], "context": decode(left), "act": _r(v)})
    return {
        "mean": _r(sum(v for v, _ in kept) / len(kept)) if kept else 0.0,
        "n": len(kept),
        "token": None if token is None else {"text": texts[token], "share": _r(token_share)},
        "after": None if after is None else {"text": texts[after], "share": _r(after_share)},
        "class": None if cls is None else {"name": cls, "share": _r(cls_share)},
        "examples": examples,
    }


def _ranked_tokens(stats: PretrainingStats, j: int, texts: list[str], largest: bool) -> list[dict[str, Any]]:
    """The SHOWN tokens (seen >= MIN_COUNT times) with the largest (smallest) mean activation of column j."""
    counts = stats.token_counts
    means = stats.token_sums[:, j] / counts.clamp(min=1)
    fill = -math.inf if largest else math.inf
    means = torch.where(counts >= MIN_COUNT, means, torch.full_like(means, fill))
    k = min(SHOWN, int((counts >= MIN_COUNT).sum()))
    values, ids = means.topk(k, largest=largest)
    return [
        {"text": texts[i], "mean": _r(v), "count": int(counts[i])}
        for v, i in zip(values.tolist(), ids.tolist())
    ]


def pretraining_evidence(stats: PretrainingStats, j: int, texts: list[str], decode: Decode) -> dict[str, Any]:
    """The pretraining part of a node's description (column j)."""
    n = stats.n_positions
    mean = float(stats.total[j]) / n
    var = max(0.0, float(stats.total_sq[j]) / n - mean * mean)
    return {
        "positions": n,
        "mean": _r(mean),
        "std": _r(math.sqrt(var)),
        "active": _r(float(stats.active[j]) / n),
        "top": _side(stats, j, True, texts, decode),
        "bottom": _side(stats, j, False, texts, decode),
        "top_tokens": _ranked_tokens(stats, j, texts, largest=True),
        "bottom_tokens": _ranked_tokens(stats, j, texts, largest=False),
    }


# ---- task prompts ---------------------------------------------------------------------------------------


def prompt_kinds(prompts: PromptSet, texts: list[str]) -> dict[str, Any]:
    """Names of the two prompt kinds: the token where a pair's two prompts (rows 2i, 2i+1) differ (the cue),
    and the answers. {"positive": {"cue", "answer"}, "negative": {...}}; cue None when it cannot be found."""
    out: dict[str, Any] = {}
    for key, rows in (("positive", prompts.sign > 0), ("negative", prompts.sign < 0)):
        answer, _ = _mode(prompts.correct[rows].tolist())
        out[key] = {"cue": None, "answer": None if answer is None else texts[answer]}
    toks, last = prompts.tokens.cpu(), prompts.last.cpu()
    if len(toks) % 2 or not torch.equal(last[0::2], last[1::2]):
        return out
    a, b, sign = toks[0::2], toks[1::2], prompts.sign[0::2].cpu()
    differ = (a != b).any(1)
    first = (a != b).int().argmax(1)
    rows = torch.arange(len(a))[differ]
    if len(rows) == 0:
        return out
    cue_a, cue_b = a[rows, first[rows]], b[rows, first[rows]]
    pos_cue = torch.where(sign[rows] > 0, cue_a, cue_b).tolist()
    neg_cue = torch.where(sign[rows] > 0, cue_b, cue_a).tolist()
    out["positive"]["cue"] = texts[_mode(pos_cue)[0]]
    out["negative"]["cue"] = texts[_mode(neg_cue)[0]]
    return out


def kind_name(kind: dict[str, Any]) -> str:
    """How a label names a prompt kind: by its cue token, else by its answer."""
    if kind.get("cue") is not None:
        return f"{show(kind['cue'])} prompts"
    return f"prompts answered {show(kind.get('answer') or '?')}"


def _compare(pos: Tensor, neg: Tensor) -> dict[str, list[float]]:
    """Per column of [Np, n] and [Nn, n]: the two means, their difference and its size in pooled stds
    (capped at +-MAX_EFFECT, reached when neither kind varies)."""
    mp, mn = pos.mean(0), neg.mean(0)
    pooled = ((pos.var(0, unbiased=False) + neg.var(0, unbiased=False)) / 2).sqrt()
    diff = mp - mn
    effect = (diff / pooled.clamp(min=1e-8)).clamp(-MAX_EFFECT, MAX_EFFECT)  # no spread: fully separated
    effect = torch.where(diff.abs() > 1e-8, effect, torch.zeros_like(effect))
    return {
        "positive": mp.tolist(),
        "negative": mn.tolist(),
        "diff": diff.tolist(),
        "effect": effect.tolist(),
    }


@dataclass
class TaskStats:
    last: dict[
        str, list[float]
    ]  # at each prompt's last position: positive, negative, diff, effect per column
    all_positions: dict[str, list[float]]  # over every real position (<= last)
    moved: dict[str, list[float]]  # value channels: what the head carries to the last position (else 0)
    attention: dict[tuple[int, int], dict[str, Any]]  # (layer, head) -> attention summary


@torch.no_grad()
def task_stats(model: Any, cols: NodeColumns, prompts: PromptSet, texts: list[str], kinds: dict) -> TaskStats:
    """Node activations on the task prompts (both kinds) and, for heads with q/k/v nodes, their attention."""
    heads = sorted(
        {(layer, idx // model.cfg.d_head) for layer, loc, idx in zip(cols.layers, cols.locations, cols.indices)
         if node_location(loc).kind == HEAD_CHANNEL}
    )  # fmt: skip
    patterns = sorted({f"{layer}.attn.pattern" for layer, _ in heads})
    locs = [loc for loc, _ in cols.groups]
    names = locs + patterns
    cache = model.run_with_cache(prompts.tokens, names, stop_at=_last_hook(names, model.hook_names()))
    acts = cols.gather(cache)  # [N, T, n]
    rows = torch.arange(len(prompts), device=acts.device)
    pos, neg = prompts.sign > 0, prompts.sign < 0
    at_last = acts[rows, prompts.last]
    valid = torch.arange(acts.shape[1], device=acts.device)[None, :] <= prompts.last[:, None]  # [N, T]
    everywhere = (valid & pos[:, None], valid & neg[:, None])
    attention = {
        (layer, h): head_attention(cache[f"{layer}.attn.pattern"][:, h], prompts, texts, kinds)
        for layer, h in heads
    }
    moved = moved_values(model, cols, cache, acts, prompts)
    return TaskStats(
        _compare(at_last[pos], at_last[neg]),
        _compare(acts[everywhere[0]], acts[everywhere[1]]),
        _compare(moved[pos], moved[neg]),
        attention,
    )


def moved_values(
    model: Any, cols: NodeColumns, cache: dict[str, Tensor], acts: Tensor, prompts: PromptSet
) -> Tensor:
    """[N, n]: for each value channel, sum_t a(last, t) * v_t, what its head carries into the prompt's last
    position (the channel's share of the head output there); 0 in the other columns. acts: [N, T, n]."""
    moved = torch.zeros(acts.shape[0], acts.shape[2], device=acts.device)
    rows = torch.arange(len(prompts), device=acts.device)
    for j, (layer, loc, idx) in enumerate(zip(cols.layers, cols.locations, cols.indices)):
        if loc == "attn.v":
            weights = cache[f"{layer}.attn.pattern"][rows, idx // model.cfg.d_head, prompts.last]  # [N, T]
            moved[:, j] = (weights.float() * acts[:, :, j]).sum(1)
    return moved


def head_attention(pattern: Tensor, prompts: PromptSet, texts: list[str], kinds: dict) -> dict[str, Any]:
    """Where one head looks from each prompt's last position. pattern: [N, T, T] of the head.

    Per prompt kind: the ATTEND_SHOWN tokens with the most attention mass (mean over prompts), and the mean
    distance back (attention-weighted)."""
    rows = torch.arange(len(prompts), device=pattern.device)
    weights = pattern[rows, prompts.last].float()  # [N, T]
    back = (prompts.last[:, None] - torch.arange(weights.shape[1], device=weights.device)[None, :]).clamp(
        min=0
    )
    out: dict[str, Any] = {}
    for key, sel in (("positive", prompts.sign > 0), ("negative", prompts.sign < 0)):
        w, ids = weights[sel], prompts.tokens[sel]
        mass = torch.zeros(len(texts), device=w.device).index_add_(0, ids.reshape(-1), w.reshape(-1))
        mass = mass / max(1, len(w))
        values, top = mass.topk(min(ATTEND_SHOWN, len(texts)))
        out[key] = {
            "kind": kind_name(kinds[key]),
            "tokens": [
                {"text": texts[i], "mass": _r(v)} for v, i in zip(values.tolist(), top.tolist()) if v > 0
            ],
            "distance": _r(float((w * back[sel]).sum() / max(1, len(w)))),
        }
    return out


def logit_weights(model: Any, prompts: PromptSet) -> tuple[Tensor, int, int]:
    """Direct weight of every residual channel on the logit difference A - B: ln_f gain times (U[A] - U[B]).

    A and B are the most common correct and wrong answers of the positive prompts. Returns ([d_model], A, B)."""
    pos = prompts.sign > 0
    a = int(_mode(prompts.correct[pos].tolist())[0])
    b = int(_mode(prompts.wrong[pos].tolist())[0])
    unembed = model.transformer.wte.weight if model.lm_head is None else model.lm_head.weight
    gain = model.transformer.ln_f.weight
    return (gain * (unembed[a] - unembed[b])).detach().float().cpu(), a, b


# ---- labels ---------------------------------------------------------------------------------------------


def pretraining_phrase(p: dict[str, Any]) -> str:
    """`fires on '"' after '('`, `fires on quote tokens`, `negative on ' if'`, or `silent on pretraining text`."""
    if not p["active"]:
        return "silent on pretraining text"
    top, bottom = p["top"], p["bottom"]
    use_top = abs(top["mean"]) >= abs(bottom["mean"])
    side, verb = (top, "fires on") if use_top else (bottom, "negative on")
    if side["token"] is None:
        return ""
    if side["token"]["share"] >= SHARE:
        after = side["after"]
        tail = f" after {show(after['text'])}" if after is not None and after["share"] >= SHARE else ""
        return f"{verb} {show(side['token']['text'])}{tail}"
    if side["class"]["share"] >= SHARE:
        return f"{verb} {side['class']['name']} tokens"
    return f"{verb} mixed tokens, most {show(side['token']['text'])}"


def task_difference(t: dict[str, Any]) -> tuple[str, str] | None:
    """("moved" or "last", the prompt kind that is higher) for the first of what a value channel's head carries
    to the last position ("moved") and the activation at the last position whose difference between the kinds
    is at least EFFECT pooled stds; None when neither is."""
    for key in ("moved", "last"):
        d = t.get(key)
        if d is not None and abs(d["effect"]) >= EFFECT:
            return key, t["kinds"]["positive" if d["diff"] > 0 else "negative"]
    return None


def task_phrase(t: dict[str, Any]) -> str:
    """`higher on '("' prompts`, or for a value channel whose head carries more to the last position on one
    kind, `moves higher on '("' prompts` (task_difference)."""
    found = task_difference(t)
    if found is None:
        return ""
    return f"{'moves higher' if found[0] == 'moved' else 'higher'} on {found[1]}"


def attention_phrase(a: dict[str, Any] | None) -> str:
    """`head 3 attends to '("' | "('"` (the top attended token on each prompt kind; one when they agree), or
    `head 3 attends diffusely` when no token draws ATTEND_MIN of its attention."""
    if not a:
        return ""
    tops = [a[k]["tokens"][0] for k in ("positive", "negative") if a[k]["tokens"]]
    if not tops:
        return ""
    if max(t["mass"] for t in tops) < ATTEND_MIN:
        return f"head {a['head']} attends diffusely"
    tops = [t["text"] for t in tops]
    shown = " | ".join(show(t) for t in dict.fromkeys(tops))
    return f"head {a['head']} attends to {shown}"


def logit_phrase(g: dict[str, Any] | None) -> str:
    """`logit diff +0.42` for a write channel that feeds the unembedding with a task difference."""
    if not g or not g.get("feeds_unembedding") or abs(g["direct_diff"]) < 0.005:
        return ""
    return f"direct logit diff {g['direct_diff']:+.2f}"


def position_profile(model: Any, layer: int, location: str, channel: int) -> dict[str, Any]:
    """Where a concatenated position channel is largest and smallest: its value (before AbsTopK) is a function
    of the position alone, the block's position norm of the position embedding."""
    block = model.transformer.h[layer]
    norm = block.ln_p1 if location.startswith("attn") else block.ln_p2
    with torch.no_grad():
        values = norm(model.transformer.wpe.weight)[:, channel].float()  # [n_ctx]
    hi, lo = int(values.argmax()), int(values.argmin())
    return {
        "channel": channel,
        "largest_at": hi,
        "largest": _r(float(values[hi])),
        "smallest_at": lo,
        "smallest": _r(float(values[lo])),
    }


def position_phrase(p: dict[str, Any]) -> str:
    """`position channel 13 (largest at position 2, smallest at 120)`."""
    return f"position channel {p['channel']} (largest at position {p['largest_at']}, smallest at {p['smallest_at']})"


def make_label(description: dict[str, Any]) -> str:
    """The short label of a node from its description (the phrases above, joined by '; '). A position channel
    is named as one: what tokens it meets on pretraining text says nothing of it."""
    position = description.get("position")
    parts = [
        position_phrase(position) if position else pretraining_phrase(description["pretraining"]),
        task_phrase(description["task"]),
        attention_phrase(description.get("attention")),
        logit_phrase(description.get("logit")),
    ]
    return "; ".join(p for p in parts if p)


# ---- the whole circuit ------------------------------------------------------------------------------------


def residual_sources(circuit: dict[str, Any]) -> set[str]:
    """Circuit writes that a residual link takes to a later circuit read (the others feed the unembedding)."""
    return {r.get("src") for r in circuit.get("residual_links") or [] if isinstance(r, dict)}


def describe_nodes(
    model: Any,
    tokenizer: Any,
    circuit: dict[str, Any],
    tokens_path: str | Path,
    prompts: PromptSet,
    n_windows: int = 256,
    batch_size: int = 32,
    progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """{node name: {"label", "description"}} for every node of `circuit` (module docstring).

    model: a GPT in eval mode; tokenizer: its `tokenizers.Tokenizer`; tokens_path: a uint16 token file
    (val.bin); prompts: the task's PromptSet (pairs in adjacent rows, as `PruneSession.prompts` gives)."""
    nodes = circuit.get("nodes")
    if not isinstance(nodes, list) or not nodes:
        raise UserError("the circuit has no nodes to describe")
    decode = decoder(tokenizer)
    texts = vocab_texts(decode, model.cfg.vocab_size)
    cols = node_columns(nodes, model.cfg, model.hook_names())
    pre = pretraining_stats(model, cols, tokens_path, n_windows, batch_size, progress)
    kinds = prompt_kinds(prompts, texts)
    task = task_stats(model, cols, prompts, texts, kinds)
    weights, a, b = logit_weights(model, prompts)
    linked = residual_sources(circuit)
    out = {}
    for j, name in enumerate(cols.names):
        loc = node_location(cols.locations[j])
        desc: dict[str, Any] = {
            "pretraining": pretraining_evidence(pre, j, texts, decode),
            "task": {
                "kinds": {k: kind_name(v) for k, v in kinds.items()},
                "last": {k: _r(v[j]) for k, v in task.last.items()},
                "all_positions": {k: _r(v[j]) for k, v in task.all_positions.items()},
            },
        }
        channel = position_channel(name, model.cfg)
        if channel is not None:
            desc["position"] = position_profile(model, cols.layers[j], cols.locations[j], channel)
        if cols.locations[j] == "attn.v":
            desc["task"]["moved"] = {k: _r(v[j]) for k, v in task.moved.items()}
        if loc.kind == HEAD_CHANNEL:
            head = cols.indices[j] // model.cfg.d_head
            desc["attention"] = {"head": head, **task.attention[(cols.layers[j], head)]}
        if loc.kind == RESIDUAL_WRITE:
            w = float(weights[cols.indices[j]])
            desc["logit"] = {
                "weight": _r(w),
                "toward": texts[a],
                "against": texts[b],
                "direct_diff": _r(w * task.last["diff"][j]),
                "feeds_unembedding": name not in linked,
            }
        out[name] = {"label": make_label(desc), "description": desc}
    return out


def add_descriptions(
    circuit: dict[str, Any], described: dict[str, dict[str, Any]], meta: dict[str, Any]
) -> dict[str, Any]:
    """The circuit with node_info[name]["label"] and ["description"] set (other node_info keys kept) and the
    run's settings under "descriptions". Node names in `described` are the circuit's own."""
    info = circuit.get("node_info") if isinstance(circuit.get("node_info"), dict) else {}
    merged = {name: dict(info.get(name) or {}) for name in circuit["nodes"]}
    for name, d in described.items():
        merged.setdefault(name, {}).update(label=d["label"], description=d["description"])
    created = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {**circuit, "node_info": {**info, **merged}, "descriptions": {**meta, "created": created}}


def _r(x: float) -> float:
    """A float rounded to 4 significant digits for the file (inf and nan as None)."""
    if not math.isfinite(x):
        return None  # type: ignore[return-value]
    return float(f"{x:.4g}")
