"""The adapter tests share the comm tests' helpers (reference codecs, bitwise comparison)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "comm"))
