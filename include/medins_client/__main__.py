"""Run the ``medins`` command as ``python -m medins_client``."""

from __future__ import annotations

import sys

from medins_client.cli import main

sys.exit(main())
