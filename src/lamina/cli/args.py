"""What the commands' arguments share: ``[PRESET] key=value`` items, comma-separated lists and bounded numbers,
each bad value a one-line error naming the option."""

from __future__ import annotations

import argparse
import math

from lamina.errors import LaminaError


def split_items(items: list[str]) -> tuple[str | None, list[str]]:
    """``[preset] key=value ...`` -> (preset, overrides)."""
    preset, overrides = None, []
    for item in items:
        if "=" in item:
            overrides.append(item)
        elif preset is None:
            preset = item
        else:
            raise LaminaError(f"unexpected argument {item!r}: give one preset, then key=value overrides")
    return preset, overrides


def names_and_overrides(items: list[str]) -> tuple[list[str], list[str]]:
    """``ARCH ... key=value ...`` -> (architectures, overrides), in the order given."""
    return [item for item in items if "=" not in item], [item for item in items if "=" in item]


def positive_list(text: str, option: str, kind: type = int) -> list:
    """``"128,512"`` -> ``[128, 512]``: positive numbers of ``kind`` (int or float) separated by commas, or a
    LaminaError that names ``option``."""
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(not v > 0 for v in values):
        what, example = ("integers", "128,512,2048") if kind is int else ("numbers", "1e-3,3e-3")
        raise LaminaError(f"{option} takes positive {what} separated by commas (e.g. {example}), got {text!r}")
    return values


def bounded(kind: type = int, low: float | None = None, high: float | None = None, *, above: bool = False,
            below: bool = False):
    """An argparse type: a finite number of ``kind`` with ``low <= x <= high`` (``low < x`` with ``above``,
    ``x < high`` with ``below``); a bad value is a one-line usage error naming the option."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        too_low = low is not None and (value <= low if above else value < low)
        too_high = high is not None and (value >= high if below else value > high)
        if too_low or too_high:
            bounds = [f"{'>' if above else '>='} {low:g}"] if low is not None else []
            bounds += [f"{'<' if below else '<='} {high:g}"] if high is not None else []
            raise argparse.ArgumentTypeError(f"must be {' and '.join(bounds)}, got {text}")
        return value

    parse.__name__ = "integer" if kind is int else "number"
    return parse


POSITIVE = bounded(int, 1)
COUNT = bounded(int, 0)
