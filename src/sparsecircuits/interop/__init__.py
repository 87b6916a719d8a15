"""Import of the paper authors' released checkpoints and tokenizer (docs/import.md)."""

from sparsecircuits.interop.convert import import_openai
from sparsecircuits.interop.openai_config import parse_config
from sparsecircuits.interop.openai_tokenizer import load_openai_tokenizer, strip_right_padding

__all__ = ["import_openai", "load_openai_tokenizer", "parse_config", "strip_right_padding"]
