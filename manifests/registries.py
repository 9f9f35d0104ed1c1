"""What every name registry (formats, methods, backbones) shares: how it lists its names and how it
answers an unknown one."""

from __future__ import annotations

from typing import Callable, Mapping


def names_text(names, quoted: bool = False) -> str:
    """The names for messages and help texts: ``a, b, c``; ``quoted``: ``'a', 'b' or 'c'`` (how
    pydantic words a Literal's choices)."""
    names = list(names)
    if not quoted:
        return ", ".join(names)
    words = [repr(name) for name in names]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def lookup(table: Mapping, name: str, what: str, choices: str, error: Callable[[str], Exception]):
    """``table[name]``; else raises ``error("unknown <what> '<name>'; <choices>")``."""
    if name not in table:
        raise error(f"unknown {what} {name!r}; {choices}")
    return table[name]
