"""Fixtures of the portfolio service's tests; `portfolio_testkit` holds what they share."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
