"""Byte-level BPE (2048 tokens by default) with strings the task suite needs forced into the vocabulary.

The pre-tokenizer splits text with the paper authors' pattern (their `tinypython_2k`), so `("`, `")`, `]]`,
` in` and similar are single pre-tokens. Required strings are forced into the BPE *merges* (not added as
Hugging Face "added tokens", which would match inside words and corrupt the statistics): after training,
each missing string gets the chain of merges that joins its current pieces, appended at the lowest rank.
To stay within the vocabulary size, the last learned merges are dropped first.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from sparsecircuits.errors import UserError
from sparsecircuits.io import file_sha256

EOT = "<|endoftext|>"
HASH_KEY = "tokenizer_sha256"  # SHA-256 of tokenizer.json, in a run's config.json and a dataset's meta.json
SPLIT_PATTERN = r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
N_BYTES = 256


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def pre_tokenize(text: str) -> list[str]:
    """Split `text` into pre-tokens (plain strings, before the byte-level mapping)."""
    split = pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated")
    return [piece for piece, _ in split.pre_tokenize_str(text)]


def _byte_form(s: str) -> str:
    """The byte-level unicode spelling of `s`, as it appears in the BPE vocabulary."""
    return "".join(piece for piece, _ in pre_tokenizers.ByteLevel(False, False).pre_tokenize_str(s))


def _assemble(merges: list[tuple[str, str]], eot_last: bool = True) -> Tokenizer:
    """A Tokenizer from an ordered merge list: ids are the 256 bytes, then merge results, then EOT."""
    vocab: dict[str, int] = {}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet(), key=lambda c: ord(c)):
        vocab[ch] = len(vocab)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab[EOT] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=list(merges)))
    tok.pre_tokenizer = _pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOT])
    return tok


def _bpe_word(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply BPE merges to one pre-token: repeatedly merge the best-ranked adjacent pair everywhere."""
    while len(symbols) > 1:
        pairs = [(ranks.get(p, len(ranks)), p) for p in zip(symbols, symbols[1:])]
        rank, pair = min(pairs)
        if rank == len(ranks):
            break
        out, i = [], 0
        while i < len(symbols):
            if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
                out.append(pair[0] + pair[1])
                i += 2
            else:
                out.append(symbols[i])
                i += 1
        symbols = out
    return symbols


def _forcing_merges(
    tok: Tokenizer, merges: list[tuple[str, str]], required: Iterable[str]
) -> tuple[list[tuple[str, str]], int]:
    """Merges to append so every required string encodes to a single token, and how many new ids they add.

    Each appended merge joins the first two pieces the string currently splits into; merges are then
    re-applied in rank order (earlier merges can fire again on the joined piece) until one piece is left.
    A merge whose result already is a token (made by a different pair) needs no new id.
    """
    ranks = {m: i for i, m in enumerate(merges)}
    have_tokens = set(tok.get_vocab())
    extra: list[tuple[str, str]] = []
    new_tokens = 0
    for s in required:
        form = _byte_form(s)
        pieces = _bpe_word(list(form), ranks)
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            ranks[pair] = len(ranks)
            extra.append(pair)
            if pair[0] + pair[1] not in have_tokens:
                have_tokens.add(pair[0] + pair[1])
                new_tokens += 1
            pieces = _bpe_word(list(form), ranks)
    return extra, new_tokens


def check_required(required: Iterable[str]) -> list[str]:
    """Validate required strings: each must be one pre-token (BPE merges never cross pre-tokens)."""
    required = list(dict.fromkeys(required))
    for s in required:
        if pre_tokenize(s) != [s]:
            raise UserError(f"required token {s!r} is not a single pre-token: {pre_tokenize(s)}")
    return required


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048, required: Iterable[str] = ()) -> Tokenizer:
    """Train a byte-level BPE of exactly `vocab_size` ids on `texts`, with `required` strings as single tokens.

    The last id is the end-of-text token. Raises UserError if the vocabulary cannot hold the bytes, the
    end-of-text token and the required strings.
    """
    required = check_required(required)
    if vocab_size < N_BYTES + 1 + len(required):
        raise UserError(
            f"vocabulary size {vocab_size} is too small: it needs {N_BYTES} bytes, 1 end-of-text token "
            f"and room for {len(required)} required tokens"
        )
    base = Tokenizer(models.BPE())
    base.pre_tokenizer = _pre_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        min_frequency=2,
    )
    base.train_from_iterator(texts, trainer=trainer)
    learned = [
        tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in _model_json(base)["merges"]
    ]
    # Drop learned merges from the end until the forced ones fit; each drop may change what is needed.
    for keep in range(len(learned), -1, -1):
        tok = _assemble(learned[:keep])
        extra, new_tokens = _forcing_merges(tok, learned[:keep], required)
        if tok.get_vocab_size() + new_tokens <= vocab_size:
            break
    else:
        raise UserError(
            f"vocabulary size {vocab_size} is too small for the {len(required)} required tokens: with no learned "
            f"merges at all they still need {tok.get_vocab_size() + new_tokens} ids"
        )
    tok = _assemble(learned[:keep] + extra)
    for s in required:
        if len(tok.encode(s).ids) != 1:
            raise UserError(f"could not force {s!r} into the vocabulary")
    return tok


def _model_json(tok: Tokenizer) -> dict:
    return json.loads(tok.to_str())["model"]


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a `tokenizer.json` (Hugging Face format); a missing or corrupt file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"tokenizer not found: {path}")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # the Rust side raises plain Exceptions with long messages
        raise UserError(f"cannot read tokenizer {path}: {str(e).splitlines()[0]}") from None


def eot_id(tok: Tokenizer) -> int:
    i = tok.token_to_id(EOT)
    if i is None:
        raise UserError(f"tokenizer has no {EOT} token")
    return i


def tokenizer_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a tokenizer.json file's bytes (what runs and datasets record under HASH_KEY)."""
    return file_sha256(path)


def check_tokenizer_file(path: str | Path, expected: str | None, recorded_in: str) -> None:
    """UserError when the tokenizer file at `path` no longer has the SHA-256 recorded in `recorded_in`.

    `expected` None (an older run or dataset that recorded none) checks nothing."""
    if expected is not None and tokenizer_sha256(path) != expected:
        raise UserError(
            f"{path} is not the tokenizer recorded in {recorded_in} (SHA-256 differs): it was replaced "
            "or edited; restore the original"
        )


def check_same_vocab(a: Tokenizer, b: Tokenizer, what_a: str, what_b: str) -> None:
    """UserError unless two tokenizers have the same vocabulary (same token strings at the same ids)."""
    va, vb = a.get_vocab(), b.get_vocab()
    if len(va) != len(vb):
        raise UserError(f"vocabulary mismatch: {what_a} has {len(va)} tokens, {what_b} has {len(vb)}")
    if va != vb:
        raise UserError(f"tokenizer mismatch: {what_a} and {what_b} have {len(va)} tokens but different ones")
