"""A fake national medical-insurance gateway on loopback, for tests and demos.

It follows ``docs/gateway-protocol.md`` and reads the interface catalog ``include/interfaces.json``:
the envelope checks, sign-in, signed headers, deterministic fake answers of the real shapes,
settlements that can be undone, and injected faults. Start it with :func:`start_sandbox` or
``python -m sandbox --port 8900``.
"""

from __future__ import annotations

from sandbox.server import DEFAULT_SERVICE_PATH, SandboxServer, start_sandbox

__all__ = ["DEFAULT_SERVICE_PATH", "SandboxServer", "start_sandbox"]
