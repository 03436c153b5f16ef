"""A captioning server that serves feature vectors only never imports torch (issue 11, target 8).

torch is imported when a captioner's image encoder is loaded (``models.captioning.features``), not by
the server, the settings (device detection, torch threads) or the decoder, nor in the decoding
process (``caption_decode=process``). The subprocess reports its resident memory and its decoding
process's once idle after a request; the test prints them (no memory assertion: they depend on the
machine and the libraries' versions).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SERVER = textwrap.dedent("""
    import asyncio, sys
    import numpy as np
    from pixelrpc.clients.captioning import AsyncCaptioningClient
    from pixelrpc.models.captioning.captioning_rnn import CaptioningRNN, save_to_registry
    from pixelrpc.models.registry import Registry
    from pixelrpc.services.server import create_server
    from pixelrpc.services.settings import Settings

    async def main():
        words = ["<NULL>", "<START>", "<END>", "a", "cat"]
        model = CaptioningRNN({w: i for i, w in enumerate(words)}, input_dim=16, wordvec_dim=8, hidden_dim=16,
                              cell_type="lstm", seed=0)
        save_to_registry(model, Registry(sys.argv[1]), "tiny")
        settings = Settings.from_env(port=0, registry=sys.argv[1], metrics_port=0, shutdown_delay=0.0,
                                     torch_threads=1, preload="tiny", log_level="WARNING")
        server, port = await create_server(["captioning"], settings)
        await server.start()
        async with AsyncCaptioningClient(f"127.0.0.1:{port}", timeout=30) as client:
            out = await client.caption(np.zeros(16, np.float32), model="tiny", max_length=5)
        await asyncio.sleep(0.5)
        rss = [line for line in open("/proc/self/status") if line.startswith("VmRSS")][0].split()[1]
        worker = server.contexts["captioning"].state["captioning_decode_engine"].pid
        worker_rss = [line for line in open(f"/proc/{worker}/status") if line.startswith("VmRSS")][0].split()[1]
        worker_torch = "libtorch" in open(f"/proc/{worker}/maps").read()
        print("CAPTION", len(out.captions), "TORCH", "torch" in sys.modules, "RSS_KIB", rss,
              "WORKER_TORCH", worker_torch, "WORKER_RSS_KIB", worker_rss, flush=True)
        await server.stop(0)

    asyncio.run(main())
""")


def test_a_feature_vector_captioning_server_does_not_import_torch(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PIXELRPC_DEVICE", "PIXELRPC_TORCH_THREADS")}
    proc = subprocess.run([sys.executable, "-c", SERVER, str(tmp_path / "registry")], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("CAPTION"))
    fields = line.split()
    assert fields[1] == "1"
    assert fields[3] == "False", "the captioning server imported torch while serving feature vectors"
    assert fields[7] == "False", "the caption decoding process loaded torch"
    print(f"idle RSS of a feature-vector captioning server: {int(fields[5]) / 1024:.0f} MiB, "
          f"its decoding process {int(fields[9]) / 1024:.0f} MiB")
