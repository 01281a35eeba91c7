"""Regenerate the generated sections of README.md (the flags table)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modules.settings import flags_markdown  # noqa: E402


def replace_section(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no {name} markers")
    return pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)


def main() -> int:
    readme = ROOT / "README.md"
    readme.write_text(replace_section(readme.read_text(), "flags", flags_markdown()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
