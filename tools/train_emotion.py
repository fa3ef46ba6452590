#!/usr/bin/env python3
"""Train edged's own facial-emotion classifier: the command line of :mod:`edged_train`.

The training itself lives in the ``edged_train`` package at the repository root (config,
data, model, loop, export, sidecar); this script keeps the documented command lines of
models/README.md working. ``python -m edged_train`` is the same. ``--help`` lists every
option.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from edged_train.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
