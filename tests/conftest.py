"""Shared test set-up: repo root importable, few threads (2-core CI), deterministic torch, and the
hypothesis profiles: `suite` (the default, what CI runs) and `fast` (`make test-fast`)."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local test clusters only; set consistently
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from hypothesis import settings  # noqa: E402

settings.register_profile("suite", max_examples=80, deadline=None)
settings.register_profile("fast", max_examples=15, deadline=None)
settings.load_profile("suite")  # `--hypothesis-profile=fast` (make test-fast) overrides it
