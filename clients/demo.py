"""``make demo``: start the three services as separate processes, check their health, stop them.

The full demo (bootstrapped default models, captions, saliency, fooling, class visualization and
style transfer written to ``demo-output/``) is assembled on this skeleton by the embedded-default work.
"""

from __future__ import annotations

import sys
import tempfile
import time

from pixelrpc.clients.launcher import start_suite
from pixelrpc.models.registry import default_root


def main() -> int:
    registry = default_root()
    print("PixelRPC demo")
    print(f"  registry: {registry}")
    print("  starting captioning, visualization and style as separate processes on 127.0.0.1 ...")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pixelrpc-demo-") as logs:
        suite = start_suite(registry, logs)
        try:
            suite.wait_healthy(timeout=180)
            for name, svc in suite.services.items():
                print(f"  {name:<14} {svc.address:<18} SERVING")
        finally:
            codes = suite.stop()
    print(f"  stopped cleanly: {codes} ({time.perf_counter() - started:.1f}s)")
    return 0 if all(c == 0 for c in codes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
