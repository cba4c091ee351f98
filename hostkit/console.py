"""The Rich consoles both command lines print people's text with: markup and emoji never obeyed.

Apart from hostkit.cli so that a command that prints no text for people (`--json`, a refusal) never
imports Rich.
"""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from hostkit.shown import escape_unshown


class PlainConsole(Console):
    """A Rich console that shows every string as it is, never obeys it: markup ([bold], [conceal],
    an unbalanced [/]) and emoji codes are never interpreted, nothing is highlighted, and unshown
    characters are escaped (escape_unshown; our own newlines stay). Every str Rich renders (print
    arguments, table cells and titles) passes render_str, so this one place covers them all."""

    def __init__(self, **kwargs) -> None:
        super().__init__(markup=False, highlight=False, emoji=False, **kwargs)

    def render_str(self, text: str, **kwargs) -> Text:
        kwargs.update(markup=False, emoji=False)  # also when a caller asks for markup=True
        return super().render_str(escape_unshown(text, keep="\n"), **kwargs)


stdout_console = PlainConsole()
stderr_console = PlainConsole(stderr=True)
