"""Procedural generator of short, varied, valid Python programs of simple idioms.

The paper pretrained on generated Python of simple, repetitive idioms (in the spirit of TinyStories) mixed with
more realistic code. This generator plays that role offline. It has its own vocabulary pools and grammar and
does not import the task suite, so evaluation prompts are not copied into pretraining data.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

NOUNS = (
    "item apple node user order price score word line token record row cell entry point value key name "
    "total count size index result buffer path label color shape city animal book page task event"
).split()
ADJ = "new old max min last first next prev raw clean best temp full small big".split()
FUNCS = (
    "process update compute parse load save build check render merge split collect filter scale "
    "convert normalize find count format send fetch"
).split()
CLASSES = "Point Vector Account Inventory Player Matrix Robot Timer Queue Stack Shape Student Car".split()
WORDS = (
    "hello world spam eggs alpha beta gamma delta done ready error warning ok yes no red green blue "
    "north south small large open closed data info debug value"
).split()
# Calls that take a message string, and words for longer messages.
SAYERS = "print log.debug log.error out.write report notify say emit fail abort".split() + [
    f"raise {e}" for e in ("TypeError", "KeyError", "IOError", "AssertionError")
]
VERBS = "reading writing opening closing sending got lost bad empty wrong too many not enough".split()


class Gen:
    """One random program builder; `program()` returns a complete, parseable module."""

    def __init__(self, rng: random.Random):
        self.r = rng

    # -- small pieces -------------------------------------------------------------------------
    def var(self) -> str:
        r = self.r
        n = r.choice(NOUNS)
        return (
            f"{r.choice(ADJ)}_{n}"
            if r.random() < 0.3
            else n + (r.choice(["s", "_list", ""]) if r.random() < 0.3 else "")
        )

    def num(self) -> str:
        return str(self.r.choice([0, 1, 2, 3, 4, 5, 7, 8, 10, 12, 16, 20, 42, 100, self.r.randint(0, 999)]))

    def string(self) -> str:
        words = " ".join(self.r.choice(WORDS) for _ in range(self.r.randint(1, 3)))
        q = self.r.choice(['"', "'"])
        return f"{q}{words}{q}"

    def message(self) -> str:
        """A call with a message of one to seven words, in either quote: the quote must be closed in kind."""
        r = self.r
        words = [r.choice(r.choice((WORDS, NOUNS, VERBS, ADJ))) for _ in range(r.randint(1, 7))]
        q = r.choice(['"', "'"])
        return f"{r.choice(SAYERS)}({q}{' '.join(words)}{q})"

    def matrix(self) -> str:
        """A list of two to four rows of numbers or names, or the same items as one flat list."""
        r = self.r
        rows, cols = r.randint(2, 4), r.randint(2, 4)
        item = r.choice([self.num, lambda: r.choice("abcdxyz"), lambda: r.choice(["-1", "0.5", "2.0"])])
        cells = [[item() for _ in range(cols)] for _ in range(rows)]
        if r.random() < 0.5:
            return "[" + ", ".join("[" + ", ".join(row) + "]" for row in cells) + "]"
        return "[" + ", ".join(x for row in cells for x in row) + "]"

    def atom(self) -> str:
        return self.r.choice(
            [self.num, self.string, self.var, lambda: self.r.choice(["True", "False", "None"])]
        )()

    def list_lit(self, depth: int = 0) -> str:
        n = self.r.randint(0, 4)
        if depth < 2 and self.r.random() < 0.35:
            return "[" + ", ".join(self.list_lit(depth + 1) for _ in range(max(1, n))) + "]"
        return "[" + ", ".join(self.r.choice([self.num, self.string])() for _ in range(n)) + "]"

    def dict_lit(self) -> str:
        items = [f"{self.string()}: {self.atom()}" for _ in range(self.r.randint(0, 3))]
        return "{" + ", ".join(items) + "}"

    def expr(self) -> str:
        r = self.r
        a, b = self.var(), self.atom()
        return r.choice(
            [
                lambda: f"{a} {r.choice(['+', '-', '*', '//', '%'])} {self.num()}",
                lambda: f"len({a})",
                lambda: f"{a}[{self.num()}]",
                lambda: f"{r.choice(FUNCS)}({a})",
                lambda: f"{a}.{r.choice(['get', 'pop', 'count', 'index'])}({b})",
                lambda: f"[{a[0]} * 2 for {a[0]} in {a}]",
                lambda: f"{{k: v for k, v in {a}.items()}}",
                lambda: f"sum({a}) / max(len({a}), 1)",
                lambda: self.list_lit(),
                lambda: self.dict_lit(),
                lambda: f"{self.string()}.join({a})",
                lambda: f"str({a}).{r.choice(['strip', 'upper', 'lower'])}()",
                lambda: self.atom(),
            ]
        )()

    def cond(self) -> str:
        r = self.r
        a = self.var()
        return r.choice(
            [
                lambda: f"{a} {r.choice(['>', '<', '>=', '<=', '==', '!='])} {self.num()}",
                lambda: f"{a} is None",
                lambda: f"not {a}",
                lambda: f"{self.string()} in {a}",
                lambda: f"isinstance({a}, {r.choice(['int', 'str', 'list', 'dict'])})",
                lambda: f"{a} and {self.var()}",
            ]
        )()

    # -- statements -----------------------------------------------------------------------------
    def simple(self, ind: str) -> list[str]:
        r = self.r
        v = self.var()
        return [
            ind
            + r.choice(
                [
                    lambda: f"{v} = {self.expr()}",
                    lambda: f"{v} += {self.num()}",
                    lambda: f"print({self.expr()})",
                    lambda: f'print(f"{r.choice(WORDS)} {{{v}}}")',
                    lambda: f"print(f'{{{v}!r}} {r.choice(WORDS)}')",
                    lambda: f"{v}.append({self.atom()})",
                    lambda: f"{v} = {self.string()} + str({self.var()})",
                    lambda: f"{v}, {self.var()} = {self.atom()}, {self.atom()}",
                    lambda: f"{v} = set()",
                    lambda: f"{v}.add({self.atom()})",
                    lambda: f"{v} = {r.choice(FUNCS)}({self.atom()}, {self.atom()})",
                    lambda: f"{v} = lambda {v[0]}: {v[0]} {r.choice(['+', '*'])} {self.num()}",
                    lambda: f"{v}[{self.string()}] = {self.atom()}",
                    lambda: f"assert {self.cond()}",
                    self.message,
                    self.message,
                    lambda: f"{v} = {self.atom()} if {self.cond()} else {self.atom()}",
                    lambda: f"{v}, {v}_b = {v}_b, {v}",
                    lambda: f"{r.choice(['f', 'fh', 'out'])} = open({self.string()})",
                    lambda: f"{v} = {self.matrix()}",
                    lambda: f"{v} = {r.choice(['np.array', 'tuple', 'list'])}({self.matrix()})",
                ]
            )()
        ]

    def block(self, ind: str, depth: int) -> list[str]:
        lines: list[str] = []
        for _ in range(self.r.randint(1, 3)):
            if depth < 2 and self.r.random() < 0.3:
                lines += self.compound(ind, depth + 1)
            else:
                lines += self.simple(ind)
        return lines

    def compound(self, ind: str, depth: int) -> list[str]:
        r, inner = self.r, ind + "    "
        v, w = self.var(), self.var()
        kind = r.choice(["for", "for_enum", "for_items", "while", "if", "with", "try", "grow", "while_true"])
        if kind == "for":
            head = f"for {v[0]} in {r.choice([w, f'range({self.num()})', self.list_lit()])}:"
        elif kind == "for_enum":
            head = f"for i, {v} in enumerate({w}):"
        elif kind == "for_items":
            head = f"for key, {v} in {w}.items():"
        elif kind == "while":
            head = f"while {self.cond()}:"
        elif kind == "if":
            lines = [ind + f"if {self.cond()}:", *self.block(inner, depth)]
            if r.random() < 0.4:
                lines += [ind + f"elif {self.cond()}:", *self.block(inner, depth)]
            if r.random() < 0.5:
                lines += [ind + "else:", *self.block(inner, depth)]
            return lines
        elif kind == "with":
            mode = r.choice(['"r"', "'w'", '"a"', "'rb'"])
            head = f"with open({self.string()}, {mode}) as {r.choice(['f', 'fh', 'handle', 'stream'])}:"
        elif kind == "grow":
            # A collection built up in a loop: a set grows with .add, a string or number with +=.
            init, grow = r.choice(
                [("set()", f"{v}.add({w[0]})"), ('""', f"{v} += {w[0]}"), ("0", f"{v} += 1")]
            )
            return [ind + f"{v} = {init}", ind + f"for {w[0]} in {w}:", inner + grow]
        elif kind == "while_true":
            return [
                ind + "while True:",
                *self.block(inner, depth),
                inner + f"if {self.cond()}:",
                inner + "    break",
            ]
        else:
            lines = [ind + "try:", *self.block(inner, depth)]
            exc = r.choice(["ValueError", "KeyError", "IndexError", "Exception"])
            return lines + [ind + f"except {exc} as err:", *self.block(inner, depth)]
        return [ind + head, *self.block(inner, depth)]

    def function(self, ind: str = "") -> list[str]:
        r = self.r
        params = list(dict.fromkeys(self.var() for _ in range(r.randint(0, 3))))
        n_default = r.randint(0, len(params))
        args = params[: len(params) - n_default] + [
            f"{p}={self.atom()}" for p in params[len(params) - n_default :]
        ]
        lines = [ind + f"def {r.choice(FUNCS)}_{r.choice(NOUNS)}({', '.join(args)}):"]
        if r.random() < 0.4:
            lines.append(ind + f'    """{r.choice(FUNCS).capitalize()} the {r.choice(NOUNS)}."""')
        lines += self.block(ind + "    ", 0)
        lines.append(ind + f"    return {self.expr()}")
        return lines

    def klass(self) -> list[str]:
        r = self.r
        fields = list(dict.fromkeys(r.choice(NOUNS) for _ in range(r.randint(1, 3))))
        lines = [f"class {r.choice(CLASSES)}:", f"    def __init__(self, {', '.join(fields)}):"]
        lines += [f"        self.{f} = {f}" for f in fields]
        lines += ["", f"    def {r.choice(FUNCS)}(self):", f"        return self.{r.choice(fields)}"]
        return lines

    def program(self) -> str:
        r = self.r
        parts: list[list[str]] = []
        if r.random() < 0.3:
            parts.append([f"import {r.choice(['os', 'sys', 'math', 'json', 'random', 're'])}"])
        for _ in range(r.randint(1, 4)):
            maker: Callable[[], list[str]] = r.choice(
                [self.function, self.klass, lambda: self.compound("", 0), lambda: self.simple("")]
            )
            parts.append(maker())
        return "\n\n".join("\n".join(p) for p in parts) + "\n"


def generate_programs(n_bytes: int, seed: int = 0) -> Iterator[str]:
    """Yield programs until about `n_bytes` of text have been produced. Deterministic in `seed`."""
    gen = Gen(random.Random(seed))
    produced = 0
    while produced < n_bytes:
        text = gen.program()
        produced += len(text)
        yield text
