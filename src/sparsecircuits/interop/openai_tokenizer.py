"""The paper authors' `tinypython_2k` tokenizer, converted to a Hugging Face `tokenizers` Tokenizer.

Their tokenizer is a tiktoken BPE built from two GPT-2 "data-gym" files:

- `encoder.json` maps tokens, spelled in the byte-level alphabet below, to ids;
- `vocab.bpe` lists the merges, one `left right` pair per line, after a `#version` line.

tiktoken derives the ids itself (the 256 single bytes first, printable ones before the rest, then one id
per merge in file order) and insists that `encoder.json` agrees; so do we. `<|endoftext|>` takes the next
id (2047 for tinypython_2k, as in the authors' definition) and is the only special token.

tiktoken's BPE differs from a plain merge list in two ways, and the converted tokenizer follows tiktoken:

1. A pre-token that is itself in the vocabulary is one token, whatever the merges would do
   (Hugging Face `ignore_merges=True`).
2. Two adjacent pieces merge whenever their concatenation is a token, with that token's id as the
   priority, not only when the pair is listed in `vocab.bpe`. We list every such pair ("implicit
   merges") right after the listed merge of the same token, so the priorities agree. One difference is
   left, in theory only: when two different pairs forming the same token are both mergeable at once,
   tiktoken merges the leftmost and we merge the one listed first.

Their released task prompts are right-padded with id 0, a real token (`!`): see `strip_right_padding`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypeVar

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

from sparsecircuits.errors import UserError

ENCODER_FILE = "encoder.json"
MERGES_FILE = "vocab.bpe"
EOT = "<|endoftext|>"
# Entries of encoder.json that tiktoken drops: they are not BPE tokens.
ENCODER_SPECIALS = ("<|endoftext|>", "<|startoftext|>")
# The split pattern of the authors' tinypython_2k (also ours: sparsecircuits.data.tokenizer.SPLIT_PATTERN).
AUTHORS_SPLIT_PATTERN = (
    r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

Ids = TypeVar("Ids", list, tuple, torch.Tensor)


def byte_alphabet() -> list[str]:
    """The data-gym (GPT-2) spelling of each byte, in tiktoken's id order: entry i is the token with id i.

    Printable bytes other than space stand for themselves and come first, in byte order; the other 68
    bytes follow in byte order, spelled chr(256), chr(257), ... This is the alphabet of the Hugging Face
    ByteLevel pre-tokenizer too, so token strings carry over unchanged.
    """
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    others = [b for b in range(256) if b not in set(printable)]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]


def read_merges(path: Path) -> list[tuple[str, str]]:
    """The merges of a data-gym `vocab.bpe`: a `#version` line, then one `left right` pair per line."""
    text = _read_text(path)
    lines = text.split("\n")
    if not lines[0].startswith("#version"):
        raise UserError(f"{path}: the first line should be a '#version' line, got {lines[0][:40]!r}")
    merges = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise UserError(f"{path}:{number}: expected two tokens separated by a space, got {line[:60]!r}")
        merges.append((parts[0], parts[1]))
    return merges


def read_encoder(path: Path) -> dict[str, int]:
    """`encoder.json`: token (byte-level spelling) -> id."""
    try:
        encoder = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(encoder, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in encoder.items()
    ):
        raise UserError(f"{path} should map token strings to integer ids")
    return encoder


def derive_ids(merges: list[tuple[str, str]], path: Path) -> dict[str, int]:
    """Token -> id as tiktoken derives it: the bytes in `byte_alphabet` order, then one id per merge."""
    alphabet = byte_alphabet()
    known = set(alphabet)
    ids = {ch: i for i, ch in enumerate(alphabet)}
    for i, (left, right) in enumerate(merges):
        if any(ch not in known for ch in left + right):
            raise UserError(
                f"{path}: merge {i + 1} ({left} {right}) has characters outside the byte alphabet"
            )
        if left + right in ids:
            raise UserError(f"{path}: merge {i + 1} ({left} {right}) makes {left + right!r} a second time")
        ids[left + right] = len(ids)
    for i, (left, right) in enumerate(merges):
        for part in (left, right):
            if part not in ids:
                raise UserError(f"{path}: merge {i + 1} ({left} {right}) uses {part!r}, which is not a token")
    return ids


def check_encoder(encoder: dict[str, int], ids: dict[str, int], path: Path) -> None:
    """tiktoken's consistency check: encoder.json (less its special tokens) must equal the derived ids."""
    tokens = {k: v for k, v in encoder.items() if k not in ENCODER_SPECIALS}
    missing = [t for t in ids if t not in tokens]
    extra = [t for t in tokens if t not in ids]
    if missing or extra:
        what = f"lacks {missing[0]!r}" if missing else f"has {extra[0]!r}, which vocab.bpe never makes"
        raise UserError(
            f"{path} does not match {MERGES_FILE}: it {what} "
            f"({len(missing)} token(s) missing, {len(extra)} unexpected)"
        )
    wrong = [t for t in ids if tokens[t] != ids[t]]
    if wrong:
        t = wrong[0]
        raise UserError(
            f"{path} does not match {MERGES_FILE}: {t!r} has id {tokens[t]} but its merge order gives "
            f"{ids[t]} ({len(wrong)} id(s) differ)"
        )
    if EOT in encoder and encoder[EOT] != len(ids):
        raise UserError(
            f"{path}: {EOT} has id {encoder[EOT]}, expected {len(ids)} (right after the BPE tokens)"
        )


def tiktoken_merges(merges: list[tuple[str, str]], ids: dict[str, int]) -> list[tuple[str, str]]:
    """The listed merges, each followed by the other splits of its token into two tokens (see module doc)."""
    out = []
    for left, right in merges:
        token = left + right
        out.append((left, right))
        for cut in range(1, len(token)):
            pair = (token[:cut], token[cut:])
            if pair != (left, right) and pair[0] in ids and pair[1] in ids:
                out.append(pair)
    return out


def build_tokenizer(ids: dict[str, int], merges: list[tuple[str, str]]) -> Tokenizer:
    """A byte-level BPE Tokenizer with the authors' split pattern; `<|endoftext|>` gets the next id."""
    vocab = dict(ids)
    vocab[EOT] = len(ids)
    model = models.BPE(vocab=vocab, merges=tiktoken_merges(merges, ids), ignore_merges=True)
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(AUTHORS_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOT])
    return tok


def load_openai_tokenizer(directory: str | Path) -> Tokenizer:
    """Convert the authors' `vocab.bpe` + `encoder.json` in `directory` to a Hugging Face Tokenizer.

    Ids are the authors' (tinypython_2k: 2047 BPE tokens, `<|endoftext|>` = 2047). Bad or mismatched
    files are a UserError naming the file and the first problem.
    """
    directory = Path(directory)
    merges_path, encoder_path = directory / MERGES_FILE, directory / ENCODER_FILE
    merges = read_merges(merges_path)
    ids = derive_ids(merges, merges_path)
    check_encoder(read_encoder(encoder_path), ids, encoder_path)
    return build_tokenizer(ids, merges)


def has_openai_tokenizer(directory: str | Path) -> bool:
    """Whether `directory` holds both tokenizer files."""
    directory = Path(directory)
    return (directory / MERGES_FILE).is_file() and (directory / ENCODER_FILE).is_file()


def strip_right_padding(ids: Ids, pad_id: int = 0) -> Ids:
    """Drop the trailing `pad_id`s of one prompt (a list, tuple or 1-D tensor of ids); same type back.

    The authors right-pad their released task prompts with id 0, which is also a real token (`!` in
    tinypython_2k), so padding cannot be told apart from a prompt that really ends in that token; their
    own code strips it this way too. A prompt that is all padding comes back empty.
    """
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1:
            raise ValueError(f"strip_right_padding takes one prompt (1-D), got shape {list(ids.shape)}")
        keep = (ids != pad_id).nonzero()
        return ids[: int(keep[-1]) + 1] if keep.numel() else ids[:0]
    end = len(ids)
    while end and ids[end - 1] == pad_id:
        end -= 1
    return ids[:end]


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise UserError(f"tokenizer file not found: {path}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text ({e.reason})") from None
