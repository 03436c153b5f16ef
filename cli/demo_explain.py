"""The demo's explain-a-caption section: held-out scenes, each caption with a saliency map under each word.

Each scene goes through ``client.captioning.explain`` (``ExplainCaption``, one streamed message per
word) with the overlays rendered by the server; the gallery shows the words in order, each above
its map over the image as the encoder saw it.
"""

from __future__ import annotations

import time

from PIL import Image

from pixelrpc.cli import demo_gallery as gallery_lib


def explain_scenes(demo, count: int = 3) -> None:
    """Explain the captions of ``demo.scenes[:count]`` and add them to the gallery, record and summary."""
    print(f"\nexplained captions of {count} held-out scenes (a saliency map per word, ExplainCaption):")
    start = time.perf_counter()
    section = demo.gallery.section(
        "Explained captions",
        "For every word of the greedy caption, the gradient of its log-probability (its step, the previous "
        "words fixed) with respect to the pixels, through the numpy LSTM and the SqueezeNet encoder; max of "
        "|gradient| over the channels, drawn over the image the encoder saw.",
    )
    table = gallery_lib.Table(["scene", "caption: a map under each word"])
    records, words, model = [], 0, ""
    for i, scene in enumerate(demo.scenes[:count]):
        out = demo.client.captioning.explain(Image.fromarray(scene.image), overlays=True)
        model = f"{out.meta.model_name}:{out.meta.model_version}"
        strip = gallery_lib.Strip([
            gallery_lib.Figure(demo.save(f"explain_{i:02d}_{w.position:02d}.png", w.overlay), w.word, 64)
            for w in out.words if w.overlay is not None
        ])
        words += len(out.words)
        peaks = " ".join(f"{w.word}@({w.peak[0]},{w.peak[1]})" for w in out.words)
        print(f"  scene {i:02d}: {out.caption}\n            peaks: {peaks}")
        table.rows.append([gallery_lib.Figure(f"scene_{i:02d}.png", f"scene {i}", 96), strip])
        records.append({"scene": i, **out.to_json()})
    section.tables.append(table)
    demo.record["explained_captions"] = records
    demo.summary.add(f"explain {count} captions (stream)", model, f"{words} words, a map each",
                     time.perf_counter() - start)
