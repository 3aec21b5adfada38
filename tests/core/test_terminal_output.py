"""What others wrote reaches a terminal harmless: no escape sequence, carriage return or
bidi override in a friend's message or a room post can rewrite the line it is on."""

from __future__ import annotations

import pytest

from p2psync.cli_device import terminal_safe


@pytest.mark.parametrize(
    "hostile",
    ["\x1b]0;pwned\x07", "\r\x1b[2K", "\u202eevil", "a\u200bb", "line\nbreak", "\u2028", "\x9b"],
)
def test_control_format_and_separator_characters_are_shown_escaped(hostile: str) -> None:
    shown = terminal_safe(f"Bob (05ab…): {hostile}")
    assert shown.isprintable()
    assert shown.startswith("Bob (05ab…): ")


def test_ordinary_text_in_any_script_is_left_alone() -> None:
    text = "Grüße, 你好, مرحبا, 🙂 — café"
    assert terminal_safe(text) == text
