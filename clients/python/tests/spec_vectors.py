"""Reads the hex test vectors of protocol/SPEC.md section 11."""

from __future__ import annotations

import re
from pathlib import Path

SPEC = Path(__file__).resolve().parents[3] / "protocol" / "SPEC.md"
_BLOCK = re.compile(r"```(hex-vector|hex-invalid) ([^\n]*)\n(.*?)```", re.S)


def _bytes(text: str) -> bytes:
    hex_digits = "".join(line.split("#", 1)[0] for line in text.splitlines())
    return bytes.fromhex("".join(hex_digits.split()))


def vectors() -> tuple[list[tuple[str, bytes, int]], list[tuple[str, str, bytes, int]]]:
    """(valid: [(name, bytes, version)], invalid: [(name, code name, bytes, version)]);
    a vector whose info string ends in ``v2`` or ``v3`` is a frame of a connection of
    that version."""
    valid, invalid = [], []
    for kind, info, body in _BLOCK.findall(SPEC.read_text(encoding="utf-8")):
        words = info.split()
        version = 1
        if words[-1] in ("v2", "v3"):
            words, version = words[:-1], int(words[-1][1:])
        if kind == "hex-vector":
            valid.append((words[0], _bytes(body), version))
        else:
            invalid.append((words[0], words[1], _bytes(body), version))
    return valid, invalid
