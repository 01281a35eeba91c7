"""Button icons that ship with Parlour (css/icons/*.svg).

Emoji on buttons (🔄) need an emoji font the machine may not have, and then show as empty boxes; an SVG
file always draws. Gradio serves a button's icon file itself (`gr.Button(icon=...)`).
"""

from __future__ import annotations

from pathlib import Path

ICONS_DIR = Path(__file__).resolve().parents[2] / "css" / "icons"


def icon(name: str) -> str:
    """The path of css/icons/NAME.svg (a KeyError-like failure at start-up if it is missing)."""
    path = ICONS_DIR / f"{name}.svg"
    if not path.is_file():
        raise FileNotFoundError(f"missing icon {path}")
    return str(path)
