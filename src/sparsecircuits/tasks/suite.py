"""The 20 Python next-token tasks of the paper (PAPER.md 6.1), one generator each.

Each generator declares its task right above it with `@SUITE.task(name, description, cue, candidates)`;
the registry (registry.py) lists the declared tasks in the order they appear here, the paper's order. A new
task is a generator with its decorator in this file (and its name in the test's list of expected tasks).

Every generator returns a `Draft`: the shared context (`before`, `after`), the two cues and the two single-token
completions. Completion strings are chosen to be exactly the pre-token the tokenizer produces at that point
(see tokens.py): e.g. a statement-ending colon is `":\\n"` (the split pattern glues a newline to punctuation),
a mode string opened with `'` continues with the bare letter `r`, and a closed call that ends its line is
`")\\n"`. Where the paper's candidate tokens cannot be single pre-tokens we say what we chose instead.
"""

from __future__ import annotations

import random

from sparsecircuits.tasks.base import Draft, Task, TaskSuite
from sparsecircuits.tasks.pools import COLLECTIONS, STATEMENTS, allowed, indent, preamble, scope

NL = "\n"
SUITE = TaskSuite()  # each generator below declares its task with @SUITE.task


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


def _names(pool: tuple[str, ...]) -> tuple[str, ...]:
    """Leading-space forms of names, as they appear after `= ` or `, ` (the candidate tokens)."""
    return tuple(" " + n for n in pool)


def _coll(rng: random.Random, exclude: tuple[str, ...] = ()) -> tuple[str, str]:
    """A (collection, element) name pair whose names avoid `exclude`."""
    return rng.choice([c for c in COLLECTIONS if c[0] not in exclude and c[1] not in exclude])


# ---- 1 single_double_quote -------------------------------------------------------------------------------

QUOTE_CALLS = (
    "print",
    "raise ValueError",
    "raise RuntimeError",
    "logger.info",
    "logger.warning",
    "errors.append",
    "lines.append",
    "parser.error",
    "sys.exit",
    "warnings.warn",
    "messages.append",
    "click.echo",
    "msg = ",
    "label = ",
    "title = ",
)
MSG_VERBS = ("could not open", "failed to parse", "missing", "unknown", "invalid", "skipping", "loading")
MSG_VERBS += ("saving", "found", "checking", "no such", "expected a", "cannot read", "updating")
MSG_OBJECTS = ("config file", "input", "user name", "the server", "record", "value for key", "output folder")
MSG_OBJECTS += ("table", "column", "cache entry", "argument", "token", "header row", "image", "database")
MSG_FIXED = ("hello, world", "done", "ok", "all tests passed", "nothing to do", "retrying in a moment")
MSG_FIXED += ("Hello", "Goodbye", "Welcome back", "press enter to continue", "connection closed by peer")


def _message(rng: random.Random) -> str:
    if rng.random() < 0.3:
        return rng.choice(MSG_FIXED)
    msg = f"{rng.choice(MSG_VERBS)} {rng.choice(MSG_OBJECTS)}"
    return msg.capitalize() if rng.random() < 0.5 else msg


@SUITE.task(
    "single_double_quote",
    "Close a string with the quote it was opened with.",
    "opening `(\"` vs `('`",
    ('")\n', "')\n"),
    max_cue_chars=2,
)
def single_double_quote(rng: random.Random) -> Draft:
    sc = scope(rng, forbid=('"', "'"), n_statements=(0, 3))
    before = sc.header + sc.ind + rng.choice(QUOTE_CALLS)
    # The split pattern folds a line end into a run of punctuation: `")\n` is one pre-token, so it is the
    # token a model actually predicts here (the paper's tokenizer had `")`; see docs/data.md).
    return Draft(before, '("', "('", _message(rng), '")\n', "')\n")


# ---- 2 final_kwarg -----------------------------------------------------------------------------------------

REQUIRED_ARGS = _words("path data items text x value node request name config url")
KWARG_NAMES = _words(
    "mode retries timeout verbose limit encoding callback default strict depth prefix sep count size key "
    "level scale seed cache parent"
)
DEFAULTS = ("None", "0", "1", "3", "10", "100", "True", "False", '"r"', '"utf-8"', '""', "0.5", "1.0", "-1")


@SUITE.task(
    "final_kwarg",
    "After parameters with defaults the next parameter needs one too.",
    "earlier parameters have defaults vs none do",
    ("=None", "):\n"),
    max_cue_chars=64,
)
def final_kwarg(rng: random.Random) -> Draft:
    """Earlier parameters have defaults, so the next must too (`=None`), vs none do (`):\\n` ends it)."""
    required = rng.sample(REQUIRED_ARGS, rng.randint(0, 2))
    names = rng.sample([k for k in KWARG_NAMES if k not in required], rng.randint(2, 4))
    *defaulted, last = names
    values = [rng.choice(DEFAULTS) for _ in defaulted]
    head, ind = preamble(rng), ""
    if rng.random() < 0.4:
        head += f"class {rng.choice(('Client', 'Loader', 'Store', 'Reader', 'Worker', 'Model'))}:\n"
        ind, required = "    ", ["self", *required]
        func = rng.choice(("__init__", "fetch", "load", "run", "get", "configure"))
        if func != "__init__" and rng.random() < 0.5:
            head += "    def __init__(self):\n        self.cache = {}\n\n"
    else:
        func = rng.choice(("load", "fetch", "connect", "parse", "retry", "save_file", "render", "send"))
    before = f"{head}{ind}def {func}(" + "".join(r + ", " for r in required)
    pos = "".join(f"{n}={v}, " for n, v in zip(defaulted, values)) + last
    neg = "".join(f"{n}, " for n in defaulted) + last
    body = f"{ind}    return {required[-1] if required and required[-1] != 'self' else 'None'}\n"
    key = "\x00".join([before, *names])
    return Draft(before, pos, neg, "", "=None", "):\n", "):\n" + body, body, key=key)


# ---- 3, 4 set_or_string, set_or_string_fixedvarname --------------------------------------------------------

SET_VARS = _words(
    "seen result out acc chars collected unique visited tags labels output found ids buf letters prefixes "
    "matches kept"
)
SET_FORBID = ("set()", '""', "''", ".add", "+=")


def _loop_head(rng: random.Random, elem: str, coll: str, var: str) -> list[str]:
    """The header line(s) of the loop that uses the variable; the last line opens the innermost block."""
    source = rng.choice((coll, coll, f"sorted({coll})", f"reversed({coll})", f"{coll}.split()"))
    lines = [f"for {elem} in {source}:"]
    if rng.random() < 0.5:
        cond = rng.choice((elem, f"{elem} is not None", f"len({elem}) > 2", f"{elem} not in {var}"))
        lines.append(f"    if {cond}:")
    return lines


def _set_or_string(rng: random.Random, var: str, gap: tuple[int, int]) -> Draft:
    coll, elem = _coll(rng, exclude=(var,))
    sc = scope(rng, forbid=SET_FORBID, kinds=("function", "function", "method"), args=(coll,))
    empty = rng.choice(('""', "''"))
    loop = _loop_head(rng, elem, coll, var)
    use_ind = sc.ind + "    " * len(loop)
    middle = allowed(STATEMENTS, SET_FORBID + ("\n",))
    after = (
        "\n"
        + "".join(sc.ind + s + "\n" for s in rng.sample(middle, rng.randint(*gap)))
        + "".join(sc.ind + line + "\n" for line in loop)
        + use_ind
        + var
    )
    before = f"{sc.header}{sc.ind}{var} = "
    return Draft(before, "set()", empty, after, ".add", " +=", f"({elem})\n", f" {elem}\n")


@SUITE.task(
    "set_or_string",
    "Grow a collection with .add if it was initialised as set(), with += if as a string.",
    'variable initialised as `set()` vs `""`',
    (".add", " +="),
    max_cue_chars=6,
)
def set_or_string(rng: random.Random) -> Draft:
    return _set_or_string(rng, rng.choice(SET_VARS), gap=(0, 1))


@SUITE.task(
    "set_or_string_fixedvarname",
    "set_or_string with the variable always named `current` and more lines in between.",
    'variable initialised as `set()` vs `""`',
    (".add", " +="),
    max_cue_chars=6,
)
def set_or_string_fixedvarname(rng: random.Random) -> Draft:
    return _set_or_string(rng, "current", gap=(1, 4))


# ---- 5 class_init ----------------------------------------------------------------------------------------

ATTRS = _words(
    "name size width height value data parent color path count items key label title mode level x y speed "
    "price owner config source target age email"
)
EXTRA_INIT = ("self._cache = {}", "self.enabled = True", "self.children = []", "self.created = time.time()")
EXTRA_INIT += ("self.history = []", "self.closed = False")


@SUITE.task(
    "class_init",
    "In __init__, assign the parameter of the same name as the attribute.",
    "which attribute the `self.x =` line assigns",
    _names(ATTRS),
    max_cue_chars=8,
)
def class_init(rng: random.Random) -> Draft:
    """In a run of `self.a = a` lines, the next attribute name is copied: the cue is which one is assigned."""
    args = rng.sample(ATTRS, rng.randint(3, 5))
    k = rng.randint(0, len(args) - 2)
    first, second = rng.sample(args[k:], 2)
    prefix = "self._" if rng.random() < 0.2 else "self."
    lines = [f"        {prefix}{a} = {a}" for a in args[:k]]
    if rng.random() < 0.3:
        lines.insert(rng.randint(0, len(lines)), "        " + rng.choice(EXTRA_INIT))
    if rng.random() < 0.3:
        lines.insert(0, "        super().__init__()")
    base = rng.choice(("", "", "(object)", "(Base)", "(nn.Module)"))
    head = (
        preamble(rng)
        + f"class {rng.choice(('Widget', 'Shape', 'Product', 'Profile', 'Entry', 'Box'))}{base}:\n"
    )
    if rng.random() < 0.3:
        head += indent(
            rng.choice(('"""A simple record."""', '"""One row of the table."""', "# data only")), "    "
        )
    head += f"    def __init__(self, {', '.join(args)}):\n" + "".join(line + "\n" for line in lines)
    before = head + "        " + prefix
    return Draft(before, first, second, " =", " " + first, " " + second, NL, NL)


# ---- 6 with_as ----------------------------------------------------------------------------------------------

OPEN_ARGS = ("path", "filename", "fname", "config_file", "log_path", "args.config", "options.path", "name")
OPEN_ARGS += ("path, encoding=encoding", "filename, mode", "path, newline=newline", "self.path")
HANDLES = _words("f fh handle fp stream infile")


@SUITE.task(
    "with_as",
    "`with open(...)` is followed by `as`; `f = open(...)` ends the statement.",
    "`with` vs `f =` before `open(`",
    (")", ")\n"),
    max_cue_chars=10,
)
def with_as(rng: random.Random) -> Draft:
    """`with open(p` closes with `)` then ` as`; `f = open(p` closes with `)\\n` (statement ends).

    Paper: ` as` vs a newline, read after the `)`. Under the split pattern a newline after `)` is part of the
    pre-token `)\\n`, so we predict one token earlier: `)` (followed by ` as`) vs `)\\n`.
    """
    arg = rng.choice(OPEN_ARGS)
    kinds = ("method",) if arg.startswith("self.") else ("function", "method", "loop", "module")
    sc = scope(rng, forbid=("open(", "with "), kinds=kinds, n_statements=(0, 3))
    h = rng.choice(HANDLES)
    body = rng.choice((f"data = {h}.read()", f"lines = {h}.readlines()", f"text = {h}.read().strip()"))
    closing_pos = f" as {h}:\n{sc.ind}    {body}\n"
    closing_neg = f"{sc.ind}{body}\n{sc.ind}{h}.close()\n"
    return Draft(sc.header + sc.ind, "with", f"{h} =", f" open({arg}", ")", ")\n", closing_pos, closing_neg)


# ---- 7 bracket_brace ---------------------------------------------------------------------------------------

BB_VARS = _words(
    "data result items entries config options values fields defaults colors counts table names choices "
    "params settings mapping records"
)
KEYS_STR = _words(
    "alice bob name id red green apple host port debug mode path en admin monday north small width title "
    "status user error"
)
KEYS_IDENT = _words("key name x user_id first label a left item node RED self.name")


def _bb_key(rng: random.Random) -> tuple[str, str]:
    """(key text, quote) where quote is the closing quote that starts the completion ("" if none)."""
    kind = rng.choice(("dq", "dq", "sq", "ident", "num"))
    if kind == "dq":
        return f'"{rng.choice(KEYS_STR)}', '"'
    if kind == "sq":
        return f"'{rng.choice(KEYS_STR)}", "'"
    if kind == "ident":
        return rng.choice(KEYS_IDENT), ""
    return str(rng.randint(0, 99)), ""


@SUITE.task(
    "bracket_brace",
    "The first key of a dict literal is followed by `:`, the first item of a list by `,`.",
    "`{` vs `[`",
    (":", ",", '":', '",', "':", "',"),
    max_cue_chars=1,
)
def bracket_brace(rng: random.Random) -> Draft:
    """Inside a dict literal the first key is followed by `:`; inside a list by `,` (with the closing quote)."""
    sc = scope(rng, forbid=("{", "[", "}", "]"), n_statements=(0, 3))
    key, q = _bb_key(rng)
    form = rng.choice(("assign", "assign", "multiline", "return", "call"))
    if form == "return" and not sc.ind:
        form = "assign"
    if form == "call":
        lead, end = rng.choice(("update(", "self.send(", "json.dumps(", "print(")), ")"
    else:
        lead, end = ("return " if form == "return" else f"{rng.choice(BB_VARS)} = "), ""
    if form == "multiline":
        key = f"\n{sc.ind}    {key}"
        # A second item on the line: a comma at a line end would be the pre-token `,\n`, not `,`.
        other = f"{q}b{q}" if q else "2"
        closing_pos, closing_neg = f" 1,\n{sc.ind}}}\n", f" {other},\n{sc.ind}]\n"
    else:
        other = f"{q}b{q}" if q else "2"
        closing_pos, closing_neg = f" 1}}{end}\n", f" {other}]{end}\n"
    return Draft(sc.header + sc.ind + lead, "{", "[", key, q + ":", q + ",", closing_pos, closing_neg)


# ---- 8 with_open -----------------------------------------------------------------------------------------

RW_NAMES = (("input_path", "output_path"), ("in_path", "out_path"), ("infile", "outfile"))
RW_NAMES += (("input_file", "output_file"), ("in_file", "out_file"), ("src_path", "dst_path"))
RW_NAMES += (("source_file", "target_file"), ("read_path", "write_path"))
RW_METHODS = (
    ("load", "save"),
    ("read", "write"),
    ("load_state", "save_state"),
    ("read_config", "write_config"),
)
RW_METHODS += (("import_csv", "export_csv"), ("from_file", "to_file"), ("load_json", "save_json"))
RW_FORBID = ("read", "writ", "load", "save", "dump", "input", "output", "open(", "src", "dst", "export")


@SUITE.task(
    "with_open",
    "Open a file for reading or writing according to its name.",
    "input-like vs output-like file name (or load vs save method)",
    ("r", "w"),
    max_cue_chars=14,
)
def with_open(rng: random.Random) -> Draft:
    """The file's name (or the enclosing method's name) says whether it is read (`r`) or written (`w`).

    Paper: `'r'` vs `'w'`. `'r'` is not one pre-token, so the prompt ends after the opening quote and the
    candidates are the bare mode letters `r` / `w`.
    """
    q = rng.choice(("'", '"'))
    if rng.random() < 0.5:
        src, dst = rng.choice(RW_NAMES)
        sc = scope(rng, forbid=RW_FORBID, kinds=("function", "function", "loop"), args=(src, dst))
        opener = rng.choice(("with open(", "f = open("))
        before, cue_pos, cue_neg, after = sc.header + sc.ind + opener, src, dst, f", {q}"
        ind = sc.ind
    else:
        load, save = rng.choice(RW_METHODS)
        head = preamble(rng, RW_FORBID) + f"class {rng.choice(('Store', 'Settings', 'Model', 'Table'))}:\n"
        opener = rng.choice(("with open(path", "with open(self.path", "f = open(path"))
        before, cue_pos, cue_neg = head + "    def ", load, save
        after, ind = f"(self, path):\n        {opener}, {q}", "        "
    if opener.startswith("with"):
        closing_pos = f"{q}) as f:\n{ind}    data = f.read()\n"
        closing_neg = f"{q}) as f:\n{ind}    f.write(data)\n"
    else:
        closing_pos = closing_neg = f"{q})\n"
    return Draft(before, cue_pos, cue_neg, after, "r", "w", closing_pos, closing_neg)


# ---- 9 bracket_counting ------------------------------------------------------------------------------------

BC_VARS = _words(
    "grid matrix rows data values board points pairs table weights cells coords result items layout "
    "kernel scores batch"
)
ELEMENTS = tuple(str(i) for i in range(21)) + ("-1", "0.5", "1.5", "100", "255", "x", "y", "a", "b", "w", "h")


@SUITE.task(
    "bracket_counting",
    "Close a list nested two deep with `]]`, a flat list with `]`.",
    "list of lists vs flat list",
    ("]]\n", "]\n"),
    max_cue_chars=60,
)
def bracket_counting(rng: random.Random) -> Draft:
    """Inside a list of lists the last row closes with `]]`; in a flat list with `]`."""
    sc = scope(rng, forbid=("[", "]"), n_statements=(0, 3))
    rows, cols = rng.randint(2, 3), rng.randint(2, 3)
    elems = [rng.choice(ELEMENTS) for _ in range(rows * cols)]
    nested = "[" + "], [".join(", ".join(elems[r * cols : (r + 1) * cols]) for r in range(rows))
    flat = ", ".join(elems)
    var = rng.choice(BC_VARS)
    form = rng.choice(("assign", "assign", "return", "self"))
    if (form == "return" and not sc.ind) or (form == "self" and "(self" not in sc.header):
        form = "assign"
    lead = {"assign": f"{var} = ", "return": "return ", "self": f"self.{var} = "}
    before = sc.header + sc.ind + lead[form] + "["
    key = before + "\x00" + ",".join(elems)
    # The line end belongs to the closing pre-token (`]]\n`), as in single_double_quote.
    return Draft(before, nested, flat, "", "]]\n", "]\n", key=key)


# ---- 10 for_while -------------------------------------------------------------------------------------------

LOOP_WORDS = _words(
    "node line item chunk batch job task frame msg block entry page event packet token record current "
    "cursor queue pending"
)


@SUITE.task(
    "for_while",
    "`for x` continues with `in`, `while x` with a colon.",
    "`for` vs `while`",
    (" in", ":\n"),
    max_cue_chars=5,
)
def for_while(rng: random.Random) -> Draft:
    """`for x` continues with ` in`; `while x` with `:\\n` (paper: `:`; the newline is glued to it)."""
    word = rng.choice(LOOP_WORDS)
    sc = scope(rng, n_statements=(0, 2))
    init = f"{sc.ind}{word} = {rng.choice(('head', 'first', 'None', 'start', 'get_next()'))}\n"
    before = sc.header + (init if rng.random() < 0.3 else "") + sc.ind
    closing_pos = (
        f" {rng.choice(('items', 'queue', 'batches', 'self.items', 'data'))}:\n{sc.ind}    handle({word})\n"
    )
    closing_neg = f"{sc.ind}    {word} = {word}.next\n"
    return Draft(before, "for", "while", f" {word}", " in", ":\n", closing_pos, closing_neg)


# ---- 11 else_elif -------------------------------------------------------------------------------------------

COND_VARS = _words(
    "x n value count score size mode status level key name kind age total result color speed depth"
)
COMPARISONS = ("> 0", "< 0", "== 0", "is None", ">= limit", "> threshold", "== 1", "in allowed", "< 10")
BRANCH_BODIES = ("pass", "count += 1", "result = 1", "print(x)", "handle(x)", "items.append(x)", "x = 0")


def _cond(rng: random.Random, var: str) -> str:
    return f"{var} {rng.choice(COMPARISONS)}"


@SUITE.task(
    "else_elif",
    "`else` is followed by a colon, `elif` by a condition.",
    "`else` vs `elif`",
    (":\n", *_names(COND_VARS)),
    max_cue_chars=2,
)
def else_elif(rng: random.Random) -> Draft:
    """After `else` comes `:\\n`; after `elif` a condition, which we take to start with the if's variable."""
    var = rng.choice(COND_VARS)
    sc = scope(rng, n_statements=(0, 2))
    ind = sc.ind
    block = f"{ind}if {_cond(rng, var)}:\n{ind}    {rng.choice(BRANCH_BODIES)}\n"
    if rng.random() < 0.4:
        block += f"{ind}elif {_cond(rng, var)}:\n{ind}    {rng.choice(BRANCH_BODIES)}\n"
    body = f"{ind}    {rng.choice(BRANCH_BODIES)}\n"
    closing_neg = f" {rng.choice(COMPARISONS)}:\n" + body
    return Draft(sc.header + block + ind, "else", "elif", "", ":\n", " " + var, body, closing_neg)


# ---- 12 fstring_brace --------------------------------------------------------------------------------------

FSTRING_TEXTS = ("Loaded", "Found", "Processing", "Hello", "Total", "Saving results to", "Epoch", "Step")
FSTRING_TEXTS += ("Got", "Reading", "Average score", "Number of items", "Finished task", "Welcome back")
FSTRING_TEXTS += ("Skipping", "Created user", "Training loss", "Elapsed time", "Current value", "Removed")
FSTRING_VARS = _words("count total name n value path loss epoch step user elapsed")


@SUITE.task(
    "fstring_brace",
    "Interpolate with `{` inside an f-string; close a plain string and pass the value separately.",
    '`f"` vs `"`',
    (" {", '",', "',"),
    max_cue_chars=1,
)
def fstring_brace(rng: random.Random) -> Draft:
    """In an f-string the text continues with ` {` (interpolation); in a plain string with `",` (close it,
    pass the value as the next argument to print)."""
    q = rng.choice(('"', "'"))
    sc = scope(rng, forbid=("{", 'f"', "f'"), n_statements=(0, 3))
    var = rng.choice(FSTRING_VARS)
    before = sc.header + sc.ind + "print("
    closing_pos = f"{var}}}{q})\n"
    closing_neg = f" {var})\n"
    return Draft(before, "f" + q, q, rng.choice(FSTRING_TEXTS), " {", q + ",", closing_pos, closing_neg)


# ---- 13 if_ternary -------------------------------------------------------------------------------------------

TERNARY_TARGETS = _words("result label sign out value size step name mode delta")
TERNARY_VALUES = ("0", "1", "-1", "None", "x", "x * 2", "default", "n + 1", "True", "count")


def _full_cond(rng: random.Random) -> str:
    """A condition that ends in a letter or digit (so the next pre-token is not glued to it)."""
    v = rng.choice(COND_VARS)
    coll = rng.choice(("items", "seen", "allowed", "cache"))
    return rng.choice(
        (_cond(rng, v), v, f"not {v}", f"{v} in {coll}", f"len({coll}) > 1", f"{v} is not None")
    )


@SUITE.task(
    "if_ternary",
    "`if` opening a statement is followed by a colon, inside a ternary by `else`.",
    "`if c` statement vs `y = a if c`",
    (":\n", " else"),
    max_cue_chars=24,
)
def if_ternary(rng: random.Random) -> Draft:
    """`if c` opening a statement continues with `:\\n`; inside `y = a if c` with ` else`."""
    sc = scope(rng, n_statements=(0, 3))
    value = rng.choice(TERNARY_VALUES)
    if sc.ind and rng.random() < 0.3:
        neg = f"return {value} "
    else:
        neg = f"{rng.choice(TERNARY_TARGETS)} = {value} "
    closing_pos = f"{sc.ind}    {rng.choice(BRANCH_BODIES)}\n"
    closing_neg = f" {rng.choice(TERNARY_VALUES)}\n"
    return Draft(
        sc.header + sc.ind, "", neg, f"if {_full_cond(rng)}", ":\n", " else", closing_pos, closing_neg
    )


# ---- 14 var_swap ---------------------------------------------------------------------------------------------

SWAP_NAMES = (("a", "b"), ("x", "y"), ("lo", "hi"), ("left", "right"), ("i", "j"), ("first", "second"))
SWAP_NAMES += (("prev", "curr"), ("low", "high"), ("m", "n"), ("p", "q"), ("old", "new"), ("start", "end"))
SWAP_NAMES += (("top", "bottom"), ("u", "v"))


def _swap_context(rng: random.Random, u: str, v: str, ind: str) -> tuple[str, str]:
    """Lines that lead to a swap of u and v; returns (text, indentation of the swap line)."""
    kind = rng.choice(("gcd", "fib", "if", "plain"))
    if kind == "gcd":
        return f"{ind}while {v}:\n", ind + "    "
    if kind == "fib":
        return f"{ind}{u}, {v} = 0, 1\n{ind}for _ in range(n):\n", ind + "    "
    init = f"{ind}{u} = {rng.choice(('0', 'start', 'x0', 'items[0]'))}\n{ind}{v} = {rng.choice(('1', 'n', 'y0'))}\n"
    if kind == "if":
        return init + f"{ind}if {u} > {v}:\n", ind + "    "
    return init, ind


@SUITE.task(
    "var_swap",
    "In `a, b = b, a` the final name is the first one.",
    "the order of the names on the left of the swap",
    _names(tuple(n for pair in SWAP_NAMES for n in pair)),
    max_cue_chars=28,
)
def var_swap(rng: random.Random) -> Draft:
    """In a swap `a, b = b,` the next name is the first one (` a`); the negative swaps in the other order."""
    u, v = rng.sample(rng.choice(SWAP_NAMES), 2)
    sc = scope(rng, kinds=("function", "function", "method"), args=(u, v))
    context, ind = _swap_context(rng, u, v, sc.ind)
    before = sc.header + context + ind
    closing = f" {rng.choice(('% ', '+ ', '- '))}{v}\n"  # any expression completes the tuple
    key = before + "\x00" + ",".join(sorted((u, v)))
    return Draft(
        before, f"{u}, {v} = {v},", f"{v}, {u} = {u},", "", " " + u, " " + v, closing, closing, key=key
    )


# ---- 15 indent_for -------------------------------------------------------------------------------------------

# (depth - 1) spaces for depths 4, 8, 12: the split pattern gives the last space to the next word.
INDENTS = tuple(" " * (depth - 1) for depth in (4, 8, 12))


@SUITE.task(
    "indent_for",
    "After a `for` header the next line is indented one level deeper.",
    "previous line is a `for` header vs a plain statement",
    INDENTS,
    max_cue_chars=40,
)
def indent_for(rng: random.Random) -> Draft:
    """After a `for` header the next line is indented one level deeper than after a plain statement.

    Candidates are whitespace tokens of (indent - 1) spaces: `"\\n" + 8 spaces + "x"` splits as `\\n`,
    7 spaces, ` x`.
    """
    coll, elem = _coll(rng)
    sc = scope(rng, kinds=("function", "function", "method", "loop"), args=(coll,), n_statements=(0, 3))
    head, loop_var = rng.choice(
        (
            (f"for {elem} in {coll}:", elem),
            (f"for {elem} in sorted({coll}):", elem),
            ("for i in range(n):", "i"),
            ("for key, value in data.items():", "key"),
        )
    )
    simple = allowed(STATEMENTS, ("\n",))
    deeper, same = " " * (len(sc.ind) + 3), " " * (len(sc.ind) - 1)
    closing_pos, closing_neg = f" print({loop_var})\n", f" {rng.choice(simple)}\n"
    stmt = rng.choice(simple)
    return Draft(sc.header + sc.ind, head + "\n", stmt + "\n", "", deeper, same, closing_pos, closing_neg)


# ---- 16 lambda_func -----------------------------------------------------------------------------------------

LAMBDA_NAMES = _words(
    "key handler callback transform square double is_even get_name noop identity on_done make_default "
    "default_factory predicate cleanup reset setup main run score"
)
LAMBDA_PARAMS = _words("x item s k row n v e t pair obj event value a")


@SUITE.task(
    "lambda_func",
    "`lambda p` is followed by a colon, `def name` by its parameter list.",
    "`name = lambda p` vs `def name`",
    (":", "():\n"),
    max_cue_chars=36,
)
def lambda_func(rng: random.Random) -> Draft:
    """`name = lambda p` continues with `:`; `def name` with `():\\n` (paper: `(`, which is glued to what
    follows it; we use a function without parameters so the whole `():\\n` is one pre-token)."""
    name, p = rng.choice(LAMBDA_NAMES), rng.choice(LAMBDA_PARAMS)
    sc = scope(rng, forbid=("lambda",), n_statements=(0, 3))
    closing_pos = f" {rng.choice((p, f'{p} * 2', f'str({p})', f'not {p}', 'None', f'{p}[0]'))}\n"
    closing_neg = f"{sc.ind}    {rng.choice(('return None', 'pass', 'print(1)', 'return 0'))}\n"
    before = sc.header + sc.ind
    return Draft(before, f"{name} = lambda {p}", f"def {name}", "", ":", "():\n", closing_pos, closing_neg)


# ---- 17 if_equals ------------------------------------------------------------------------------------------

EQ_VARS = _words(
    "count status mode result value x n key state flag level kind total answer choice color direction "
    "response"
)
EQ_VALUES = ("0", "1", "None", "True", "-1", "10", "'done'", '"ok"', "MAX_RETRIES", "other")


@SUITE.task(
    "if_equals",
    "A name after `if` is compared with `==`, at the start of a statement assigned with `=`.",
    "`if v` vs `v`",
    (" ==", " ="),
    max_cue_chars=3,
)
def if_equals(rng: random.Random) -> Draft:
    """`if v` continues with ` ==`; `v` at the start of a statement with ` =`."""
    var = rng.choice(EQ_VARS)
    sc = scope(rng, n_statements=(0, 3))
    closing_pos = f" {rng.choice(EQ_VALUES)}:\n{sc.ind}    {rng.choice(BRANCH_BODIES)}\n"
    closing_neg = f" {rng.choice(EQ_VALUES)}\n"
    return Draft(sc.header + sc.ind, "if ", "", var, " ==", " =", closing_pos, closing_neg)


# ---- 18 enumerate_range -------------------------------------------------------------------------------------

INDEX_NAMES = _words("i idx index n k j pos num lineno step")


@SUITE.task(
    "enumerate_range",
    "Two loop variables call for `enumerate`, one for `range`.",
    "`for i, x in` vs `for i in`",
    (" enumerate", " range"),
    max_cue_chars=8,
)
def enumerate_range(rng: random.Random) -> Draft:
    """`for i, x in` continues with ` enumerate`; `for i in` with ` range`."""
    coll, elem = _coll(rng, exclude=INDEX_NAMES)
    idx = rng.choice(INDEX_NAMES)
    sc = scope(rng, forbid=("enumerate", "range"), args=(coll,), n_statements=(0, 3))
    closing_pos = f"({coll}):\n{sc.ind}    print({idx}, {elem})\n"
    closing_neg = f"(len({coll})):\n{sc.ind}    print({idx})\n"
    before = f"{sc.header}{sc.ind}for {idx}"
    return Draft(before, f", {elem}", "", " in", " enumerate", " range", closing_pos, closing_neg)


# ---- 19 var_if ---------------------------------------------------------------------------------------------

BOOL_VARS = _words(
    "done found ok valid ready success running changed enabled verbose debug active finished dirty "
    "visible stop is_admin has_data"
)


@SUITE.task(
    "var_if",
    "`if x == True` is followed by a colon, `x = True` by a newline.",
    "`if x == True` vs `x = True`",
    (":\n", "\n"),
    max_cue_chars=14,
)
def var_if(rng: random.Random) -> Draft:
    """`if v == True` continues with `:\\n`; `v = True` ends the line (`\\n`)."""
    var = rng.choice(BOOL_VARS)
    sc = scope(rng, n_statements=(0, 3))
    value = "True" if rng.random() < 0.8 else "False"
    closing_pos = f"{sc.ind}    {rng.choice(BRANCH_BODIES)}\n"
    closing_neg = f"{sc.ind}{rng.choice(BRANCH_BODIES)}\n"
    return Draft(
        sc.header + sc.ind, f"if {var} ==", f"{var} =", f" {value}", ":\n", "\n", closing_pos, closing_neg
    )


# ---- 20 while_return_true ---------------------------------------------------------------------------------


@SUITE.task(
    "while_return_true",
    "`while True` is followed by a colon, `return True` by a newline.",
    "`while` vs `return`",
    (":\n", "\n"),
    max_cue_chars=6,
)
def while_return_true(rng: random.Random) -> Draft:
    """`while True` continues with `:\\n`; `return True` ends the line (`\\n`). PAPER.md 6.1 note: we follow
    section 3.3 (`:` vs newline), not Table 1's "indentation"."""
    sc = scope(rng, kinds=("function", "function", "method", "loop"), n_statements=(0, 3))
    ind = sc.ind
    header = sc.header
    if rng.random() < 0.3:
        header += f"{ind}if {_full_cond(rng)}:\n"
        ind += "    "
    closing_pos = f"{ind}    {rng.choice(BRANCH_BODIES)}\n{ind}    break\n"
    return Draft(header + ind, "while", "return", " True", ":\n", "\n", closing_pos, "")


TASKS: tuple[Task, ...] = tuple(SUITE.tasks)  # the paper's order: the order declared above
