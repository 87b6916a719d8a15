"""Command-line options shared by several commands, written once: device, force, quiet, preset, data, seed.

Choice lists come from the registries they name (presets from `train.config.PRESETS`, ablations from
`circuits.ablations.ABLATIONS`), and the numeric types here refuse NaN, infinities and out-of-range values at
parse time, so a bad option never reaches slow work. The device itself is resolved by the one resolver,
`train.distributed.resolve_device`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

MAX_SEED = 2**32 - 1  # numpy's legacy seeding accepts no more; torch and random take it too
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class DeviceType(click.ParamType):
    """auto, cpu, cuda or cuda:N (checked against the hardware later, by `resolve_device`)."""

    name = "device"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip()
        if not DEVICE_PATTERN.match(text):
            self.fail(f"{value!r} is not a device; expected auto, cpu, cuda or cuda:N", param, ctx)
        return text


class FiniteFloat(click.ParamType):
    """A finite float in [min, max] (either bound open with min_open / max_open); NaN and inf are refused."""

    name = "number"

    def __init__(
        self,
        min: float = -math.inf,
        max: float = math.inf,
        min_open: bool = False,
        max_open: bool = False,
    ):
        self.min, self.max, self.min_open, self.max_open = min, max, min_open, max_open

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        low_ok = number > self.min if self.min_open else number >= self.min
        high_ok = number < self.max if self.max_open else number <= self.max
        if not (math.isfinite(number) and low_ok and high_ok):
            self.fail(f"{value!r} is not in {self._interval()}", param, ctx)
        return number

    def _interval(self) -> str:
        left = "(" if self.min_open or self.min == -math.inf else "["
        right = ")" if self.max_open or self.max == math.inf else "]"
        return f"{left}{self.min:g}, {self.max:g}{right}"


def count(minimum: int = 1, maximum: int | None = None) -> click.IntRange:
    """An integer option in [minimum, maximum]."""
    return click.IntRange(min=minimum, max=maximum)


POSITIVE = FiniteFloat(0.0, min_open=True)
NON_NEGATIVE = FiniteFloat(0.0)
FRACTION = FiniteFloat(0.0, 1.0, min_open=True, max_open=True)


class LazyChoice(click.Choice):
    """A click.Choice whose choices are read from their registry on first use, so importing a command
    module (and `--help` of another command) does not import the registry's module."""

    def __init__(self, load: Callable[[], Any], case_sensitive: bool = True):
        self._load, self._choices, self.case_sensitive = load, None, case_sensitive

    @property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        if self._choices is None:
            self._choices = tuple(self._load())
        return self._choices


def preset_names() -> tuple[str, ...]:
    """The training presets: the keys of train.config.PRESETS."""
    from sparsecircuits.train.config import PRESETS

    return tuple(PRESETS)


def device_option(default: str | None = "auto", help: str | None = None) -> Decorator:
    """--device auto|cpu|cuda|cuda:N."""
    text = help or ("auto: CUDA when available, else the CPU" if default == "auto" else "cpu, cuda or cuda:N")
    return click.option(
        "--device",
        type=DeviceType(),
        default=default,
        show_default=default is not None,
        help=text,
    )


def force_option(help: str = "Replace this project's earlier output in --out.") -> Decorator:
    """--force. It only ever replaces output this project wrote (io.check_output_dir)."""
    return click.option("--force", is_flag=True, help=help)


def quiet_option(help: str = "No progress output.") -> Decorator:
    return click.option("--quiet", is_flag=True, help=help)


def seed_option(default: int = 0, help: str | None = None) -> Decorator:
    return click.option(
        "--seed",
        default=default,
        show_default=True,
        type=click.IntRange(0, MAX_SEED),
        help=help or "Random seed.",
    )


def preset_option(help: str = "Model and training preset [default: demo].") -> Decorator:
    return click.option("--preset", type=LazyChoice(preset_names), default=None, help=help)


def data_option(required: bool = True, help: str = "Dataset directory (built by `data build`).") -> Decorator:
    return click.option(
        "--data", "data_dir", required=required, default=None, type=click.Path(path_type=Path), help=help
    )


def loss_convention_option() -> Decorator:
    """--loss-convention: how the binary task loss adds up (tasks.evaluate.LOSS_CONVENTIONS)."""
    return click.option(
        "--loss-convention",
        type=click.Choice(["pair-sum", "mean"]),  # tasks.evaluate.LOSS_CONVENTIONS, without importing torch
        default="pair-sum",
        show_default=True,
        help="pair-sum: a pair's two prompts' binary CE summed, as the paper authors (chance 1.386); "
        "mean: per prompt (chance 0.693).",
    )


def shown_option(flag: str, default: Any, type: Any, help: str, dest: str | None = None) -> Decorator:
    """An option with a typed default that --help shows (most numeric options)."""
    names = (flag, dest) if dest else (flag,)
    return click.option(*names, default=default, show_default=True, type=type, help=help)
