"""Parsing of comma-separated CLI options, shared by every `pipeline` command (errors are one-line UserErrors)."""

from __future__ import annotations

from projgan.errors import UserError


def ints(text: str, name: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UserError(f"{name} must be comma-separated integers (got {text!r})") from None
    if not vals:
        raise UserError(f"{name} is empty")
    return vals


def floats(text: str, name: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"{name} must be comma-separated numbers (got {text!r})") from None


def metrics(text: str) -> tuple[str, ...]:
    text = text.strip().lower()
    return () if text in ("", "none") else tuple(m.strip() for m in text.split(",") if m.strip())


def choices(text: str, name: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    vals = tuple(v.strip() for v in text.split(",") if v.strip())
    bad = [v for v in vals if v not in allowed]
    if bad:
        raise UserError(f"{name}: unknown value {bad[0]!r}", f"choose from {', '.join(allowed)}")
    return vals


def onoff(text: str, name: str) -> tuple[bool, ...]:
    return tuple(v == "on" for v in choices(text, name, ("on", "off")))
