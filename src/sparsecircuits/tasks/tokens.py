"""Strings the task suite needs as single tokens; `data build` forces them into the BPE vocabulary."""

# Each must be one pre-token under the tokenizer's split pattern (see data/tokenizer.py).
REQUIRED_TOKENS: tuple[str, ...] = (
    '("',
    "('",
    '")',
    "')",
    "]]",
    "]",
    "],",
    " in",
    " ==",
    " =",
    " enumerate",
    " range",
    " as",
    " else",
    ".add",
    " +=",
    ":",
    "(",
    "{",
    "=None",
)
