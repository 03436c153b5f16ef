"""``pixelrpc caption``: caption images or feature vectors through the CaptioningService."""

from __future__ import annotations

from pathlib import Path

import click

from pixelrpc.cli.common import CliError, addr_option, connect, emit_json, json_option


def _inputs(paths: tuple[Path, ...]) -> list[tuple[str, object]]:
    """(label, input) pairs: an image path, or feature vectors from a .npy ([D], [1, D] or [N, D])."""
    import numpy as np

    out: list[tuple[str, object]] = []
    for path in paths:
        if path.suffix.lower() != ".npy":
            out.append((str(path), path))
            continue
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise CliError(f"{path}: not a readable .npy file ({exc})") from None
        if arr.ndim == 2 and arr.shape[0] > 1:
            out.extend((f"{path}[{i}]", row) for i, row in enumerate(arr))
        else:
            out.append((str(path), arr))
    return out


@click.command("caption")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
                metavar="IMAGE_OR_NPY...")
@click.option("--model", default="", metavar="NAME[:VERSION]", help="captioner (default: the server's)")
@click.option("--beam", "beam_width", type=int, default=None, metavar="K", help="beam search with K beams")
@click.option("--length-penalty", type=float, default=0.0, show_default=True,
              help="beam search: rank by sum(log p) / length^ALPHA")
@click.option("--sample", is_flag=True, help="sample from the softmax instead of taking the best word")
@click.option("--temperature", type=float, default=None, help="with --sample [1.0]")
@click.option("--seed", type=int, default=None, help="with --sample: reproducible captions")
@click.option("-n", "--num", "num_captions", type=int, default=0,
              help="captions per input: the n-best (--beam) or n samples (--sample)")
@click.option("--max-length", type=int, default=0, help="most tokens per caption [30]")
@click.option("--stream", is_flag=True, help="print the words as they are decoded (one input)")
@click.option("--explain", is_flag=True,
              help="a saliency map per word of the caption (one image): prints each word's peak, writes overlays")
@click.option("--caption", "forced", default=None, metavar="TEXT",
              help="with --explain: explain this caption (teacher forcing) instead of the model's own")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="with --explain: folder for the overlay PNGs [explain-IMAGE_STEM]")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="call deadline in seconds")
@addr_option("captioning")
@json_option
def caption_command(inputs, model, beam_width, length_penalty, sample, temperature, seed, num_captions, max_length,
                    stream, explain, forced, out_dir, timeout, addr, as_json):
    """Caption images (PNG, JPEG, ...) or feature vectors (.npy) with an image captioning RNN/LSTM.

    Several inputs go through one CaptionStream, at most 32 in flight (each file is read when its
    turn comes), and are printed as their answers arrive. With --explain, one image's caption is
    explained word by word: a saliency map per word (ExplainCaption), written as NN-WORD.png overlays.
    """
    if explain:
        if sample or beam_width is not None or num_captions or stream or temperature is not None or seed is not None:
            raise CliError("--explain explains the greedy caption (or --caption's): --beam, --sample, "
                           "--temperature, --seed, -n and --stream do not apply")
        _explain(inputs, model=model, caption=forced, max_length=max_length, out_dir=out_dir, timeout=timeout,
                 addr=addr, as_json=as_json)
        return
    if forced is not None or out_dir is not None:
        raise CliError("--caption and --out apply to --explain")
    if sample and beam_width is not None:
        raise CliError("choose --beam or --sample, not both")
    if (temperature is not None or seed is not None) and not sample:
        raise CliError("--temperature and --seed apply to --sample")
    strategy = "sample" if sample else ("beam" if beam_width is not None else "greedy")
    options = dict(model=model, strategy=strategy, max_length=max_length, beam_width=beam_width or 0,
                   length_penalty=length_penalty, temperature=temperature, seed=seed, num_captions=num_captions)
    items = _inputs(inputs)
    with connect("captioning", addr, timeout) as client:
        if len(items) == 1 and stream and not as_json:
            _stream_one(client, items[0], options)
            return
        if len(items) == 1:
            label, value = items[0]
            out = client.caption(value, **options)
            _print(label, out, as_json, single=True)
            return
        failures = _many(client, items, options, as_json)
    if failures:
        raise CliError(f"{failures} of {len(items)} inputs failed")


def _stream_one(client, item, options) -> None:
    from pixelrpc.clients.captioning import CaptionOutput, TokenUpdate

    label, value = item
    current = None
    for event in client.stream_caption(value, **options):
        if isinstance(event, TokenUpdate):
            if event.caption_index != current:
                if current is not None:
                    click.echo()
                current = event.caption_index
                click.echo(f"{label} [{current}]:" if options["num_captions"] > 1 else f"{label}:", nl=False)
            if event.token.word not in ("<END>", "<NULL>", "<START>"):
                click.echo(f" {event.token.word}", nl=False)
        elif isinstance(event, CaptionOutput):
            if current is not None:
                click.echo()
            else:  # beam search: only the final n-best
                _print(label, event, False, single=True)


def _many(client, items, options, as_json) -> int:
    from pixelrpc.clients.errors import RpcError

    failures, results = 0, []
    for index, outcome in client.caption_many([value for _, value in items], **options):
        label = items[index][0]
        if isinstance(outcome, RpcError):
            failures += 1
            if as_json:
                results.append({"input": label, "error": {"code": outcome.code.name, "message": outcome.details}})
            else:
                click.echo(f"{label}: error: {outcome.code.name}: {outcome.details}", err=True)
            continue
        if as_json:
            results.append({"input": label, **outcome.to_json()})
        else:
            _print(label, outcome, False, single=False)
    if as_json:
        order = {label: i for i, (label, _) in enumerate(items)}
        emit_json(sorted(results, key=lambda r: order[r["input"]]))
    return failures


def _print(label: str, out, as_json: bool, single: bool) -> None:
    if as_json:
        emit_json({"input": label, **out.to_json()})
        return
    if len(out.captions) == 1:
        click.echo(f"{label}: {out.captions[0].text}")
        return
    click.echo(f"{label}:")
    for i, c in enumerate(out.captions):
        click.echo(f"  {i + 1}. {c.text}  (score {c.score:.3f})")


def _explain(inputs, *, model, caption, max_length, out_dir, timeout, addr, as_json) -> None:
    """Explain one image's caption: print every word with its peak, write its overlay PNG."""
    from pixelrpc.clients.captioning import Explanation

    if len(inputs) != 1 or inputs[0].suffix.lower() == ".npy":
        raise CliError("--explain takes one image (PNG, JPEG, ...): the maps are over its pixels")
    image = inputs[0]
    out = Path(out_dir) if out_dir is not None else Path(f"explain-{image.stem}")
    out.mkdir(parents=True, exist_ok=True)
    files: list[str] = []
    with connect("captioning", addr, timeout) as client:
        for item in client.explain_stream(image, caption, model or None, max_length=max_length, overlays=True):
            if isinstance(item, Explanation):
                if as_json:
                    record = item.to_json()
                    for word, name in zip(record["words"], files, strict=True):
                        word["overlay"] = name
                    emit_json({"input": str(image), **record})
                else:
                    click.echo(f"{image}: {item.caption}  (log p {item.log_prob:.3f}; maps {item.size[0]}x"
                               f"{item.size[1]}, overlays {item.input_size}x{item.input_size} in {out})")
                return
            safe = "".join(ch if ch.isalnum() else "_" for ch in item.word)
            path = out / f"{item.position:02d}-{safe}.png"
            if item.overlay is not None:
                path.write_bytes(item.overlay)
            files.append(str(path))
            if not as_json:
                click.echo(f"  {item.position:2d} {item.word:<12} log p {item.log_prob:8.3f}  peak at "
                           f"(x={item.peak[0]}, y={item.peak[1]})  {path}")


def register(group: click.Group) -> None:
    group.add_command(caption_command)
