"""``pixelrpc train captioner``, ``pixelrpc eval captioner`` and ``pixelrpc features extract``.

Thin commands over ``pixelrpc.models.captioning`` that work on a local registry folder and a data
folder in the CS231n COCO captioning layout (no server needed).
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import click

from pixelrpc.cli.common import CliError, emit_json, json_option, progress

registry_option = click.option("--registry", default=None, metavar="DIR",
                               help="registry folder (env PIXELRPC_REGISTRY, default ~/.cache/pixelrpc/registry)")


def _registry(path):
    from pixelrpc.models.registry import Registry

    return Registry(path)


def _subgroup(parent: click.Group, name: str, help_text: str) -> click.Group:
    """The parent's group ``name``, created if no other module made it yet."""
    existing = parent.commands.get(name)
    if isinstance(existing, click.Group):
        return existing
    group = click.Group(name, help=help_text)
    parent.add_command(group)
    return group


def _load(registry, ref: str, device: str = "cpu"):
    from pixelrpc.models.registry import ModelCache, parse_ref

    name, version = parse_ref(ref)
    return ModelCache(registry, device=device).get(name, version)


@click.command("captioner")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="folder in the CS231n COCO captioning layout")
@click.option("--train-features", default=None, help="train feature file [train2014_vgg16_fc7(_pca).h5]")
@click.option("--val-features", default=None, help="val feature file [val2014_vgg16_fc7(_pca).h5]")
@click.option("--pca", is_flag=True, help="use the *_pca.h5 feature files")
@click.option("--cell", "cell_type", type=click.Choice(["rnn", "lstm"]), default="rnn", show_default=True)
@click.option("--hidden", "hidden_dim", type=int, default=512, show_default=True)
@click.option("--wordvec", "wordvec_dim", type=int, default=256, show_default=True)
@click.option("--epochs", type=int, default=1, show_default=True)
@click.option("--batch-size", type=int, default=100, show_default=True)
@click.option("--lr", "learning_rate", type=float, default=5e-3, show_default=True)
@click.option("--lr-decay", type=float, default=0.95, show_default=True, help="per epoch")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--val-images", type=int, default=1000, show_default=True,
              help="images scored for BLEU after each epoch (0: all)")
@click.option("--max-train", type=int, default=None, help="use only the first N training captions")
@click.option("--encoder", default=None, metavar="NAME[:VERSION]",
              help="the feature-extraction model that computed the features (default: the one recorded in "
                   "the feature files; none for the CS231n features)")
@click.option("--publish", "publish_name", required=True, metavar="NAME", help="registry name of the result")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="where to save loss_curve.png and history.json [runs/<NAME>-<time>]")
@registry_option
@json_option
def train_captioner(data_dir, train_features, val_features, pca, cell_type, hidden_dim, wordvec_dim, epochs,
                    batch_size, learning_rate, lr_decay, seed, val_images, max_train, encoder, publish_name,
                    run_dir, registry, as_json):
    """Train an image captioning RNN/LSTM with Adam and publish it to the registry."""
    from pixelrpc.models.captioning.data import CocoCaptioningData
    from pixelrpc.models.captioning.training import CaptionerTraining, TrainConfig
    from pixelrpc.models.registry import parse_ref, validate_name

    validate_name(publish_name)
    reg = _registry(registry)
    encoder_manifest = reg.resolve(*parse_ref(encoder)) if encoder else None
    config = TrainConfig(cell_type=cell_type, hidden_dim=hidden_dim, wordvec_dim=wordvec_dim, epochs=epochs,
                         batch_size=batch_size, learning_rate=learning_rate, lr_decay=lr_decay, seed=seed,
                         val_images=val_images or None, max_train=max_train)
    with CocoCaptioningData.open(data_dir, train_features=train_features, val_features=val_features, pca=pca,
                                 max_train=max_train) as data:
        training = CaptionerTraining(data, config, encoder=encoder_manifest)
        with progress(training.solver.total_iterations(), f"train {cell_type}") as bar:
            for step in training.run():
                bar.update(1)
                bar.set_postfix(epoch=step.epoch, loss=f"{step.loss:.3f}", lr=f"{step.learning_rate:.2e}")
                if step.validation is not None:
                    v = step.validation
                    bar.write(f"epoch {step.epoch}: val BLEU-1 {v['bleu1']:.4f}  BLEU-4 {v['bleu4']:.4f} "
                              f"({v['images']} images)")
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        paths = training.save_run(run_dir or Path("runs") / f"{publish_name}-{stamp}")
        manifest = training.publish(reg, publish_name)
    summary = {"model": manifest.ref, "sha256": manifest.sha256, "metrics": training.metrics(),
               "encoder": training.encoder, "loss_curve": str(paths["loss_curve"]), "history": str(paths["history"])}
    if as_json:
        emit_json(summary)
    else:
        click.echo(f"published {manifest.ref} (sha256 {manifest.sha256[:12]}); loss curve {paths['loss_curve']}")


@click.command("captioner")
@click.argument("ref", metavar="NAME[:VERSION]")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--split", type=click.Choice(["train", "val"]), default="val", show_default=True)
@click.option("--features", "features_file", default=None, help="feature file of the split [CS231n name]")
@click.option("--pca", is_flag=True, help="use the *_pca.h5 feature file")
@click.option("--max-images", type=int, default=0, help="score a seeded random subset (0: every image)")
@registry_option
@json_option
def eval_captioner(ref, data_dir, split, features_file, pca, max_images, registry, as_json):
    """Corpus BLEU-1..4 of a registered captioner's greedy captions on a data split."""
    from pixelrpc.models.captioning.data import CocoCaptioningData
    from pixelrpc.models.captioning.training import evaluate_captioner

    loaded = _load(_registry(registry), ref)
    if "captioning" not in loaded.manifest.tasks:
        raise CliError(f"{loaded.manifest.ref} is not a captioner (tasks: {', '.join(loaded.manifest.tasks)})")
    kw = {f"{split}_features": features_file}
    with CocoCaptioningData.open(data_dir, splits=(split,), pca=pca, **kw) as data:
        pin, recorded = loaded.manifest.metadata.get("encoder"), data.encoder
        if pin and recorded and pin["sha256"] != recorded["sha256"]:
            raise CliError(f"the {split} features were computed with {recorded['name']}:{recorded['version']}, "
                           f"but {loaded.manifest.ref} was trained on {pin['name']}:{pin['version']}")
        scores = evaluate_captioner(loaded.model, data, split, max_images=max_images or None)
    scores = {"model": loaded.manifest.ref, "split": split, **scores}
    if as_json:
        emit_json(scores)
    else:
        click.echo(f"{loaded.manifest.ref} on {split} ({scores['images']} images): " + "  ".join(
            f"BLEU-{n} {scores[f'bleu{n}']:.4f}" for n in range(1, 5)))


@click.command("extract")
@click.option("--encoder", required=True, metavar="NAME[:VERSION]", help="a registered feature-extraction model")
@click.option("--images", "image_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path), metavar="FILE.h5")
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="torch device for the encoder")
@registry_option
@json_option
def extract_features_command(encoder, image_dir, out_path, batch_size, device, registry, as_json):
    """Write the features of every image in a folder (file-name order) to an h5 feature file."""
    from pixelrpc.models.captioning.captioning_rnn import encoder_pin
    from pixelrpc.models.captioning.features import extract_features, list_images

    loaded = _load(_registry(registry), encoder, device)
    pin = encoder_pin(loaded.manifest)
    total = len(list_images(image_dir))
    with progress(total, f"features {loaded.manifest.ref}", enabled=not as_json) as bar:
        done = 0
        for n in extract_features(loaded.model, image_dir, out_path, encoder_pin=pin, batch_size=batch_size):
            bar.update(n - done)
            done = n
    if as_json:
        emit_json({"out": str(out_path), "images": done, "encoder": pin})
    else:
        click.echo(f"wrote {done} feature vectors to {out_path} (encoder {loaded.manifest.ref})")


def register(group: click.Group) -> None:
    _subgroup(group, "train", "Train models.").add_command(train_captioner)
    _subgroup(group, "eval", "Evaluate models.").add_command(eval_captioner)
    _subgroup(group, "features", "Compute image features with a registered encoder.").add_command(
        extract_features_command)


