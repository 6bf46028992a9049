"""Reads the hex test vectors of protocol/SPEC.md section 11."""

from __future__ import annotations

import re
from pathlib import Path

SPEC = Path(__file__).resolve().parents[3] / "protocol" / "SPEC.md"
_BLOCK = re.compile(r"```(hex-vector|hex-invalid) ([^\n]*)\n(.*?)```", re.S)


def _bytes(text: str) -> bytes:
    hex_digits = "".join(line.split("#", 1)[0] for line in text.splitlines())
    return bytes.fromhex("".join(hex_digits.split()))


def vectors() -> tuple[list[tuple[str, bytes]], list[tuple[str, str, bytes]]]:
    """(valid: [(name, bytes)], invalid: [(name, code name, bytes)])."""
    valid, invalid = [], []
    for kind, info, body in _BLOCK.findall(SPEC.read_text(encoding="utf-8")):
        words = info.split()
        if kind == "hex-vector":
            valid.append((words[0], _bytes(body)))
        else:
            invalid.append((words[0], words[1], _bytes(body)))
    return valid, invalid
