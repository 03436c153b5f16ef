"""``pixelrpc models bootstrap``: train, gate and publish the default models of the shapes world.

A thin layer over ``pixelrpc.models.bootstrap``: one progress bar per stage on stderr, every
held-out number printed beside its baseline, and a summary (``--json`` for machines).
"""

from __future__ import annotations

import os
import sys

import click

from pixelrpc.cli.common import emit_json, json_option

THREADS_ENV = "PIXELRPC_TORCH_THREADS"


def default_threads() -> int:
    """Torch threads for training: ``PIXELRPC_TORCH_THREADS`` if set (> 0), else up to 2 cores."""
    value = os.environ.get(THREADS_ENV, "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    return max(1, min(2, os.cpu_count() or 1))


class StageBars:
    """One tqdm bar per stage that has a size, replaced when the stage changes; messages in between."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.stage: str | None = None
        self.bar = None

    def __call__(self, event) -> None:
        if event.total and event.stage != self.stage:
            self.close()
            if self.enabled:
                from tqdm import tqdm

                self.bar = tqdm(
                    total=event.total,
                    desc=event.stage,
                    file=sys.stderr,
                    dynamic_ncols=True,
                    unit="step" if event.stage in ("classifier", "captioner") else "img",
                )
            self.stage = event.stage
        if self.bar is not None and event.total:
            self.bar.update(event.done - self.bar.n)
            if event.loss is not None:
                self.bar.set_postfix(loss=f"{event.loss:.3f}", refresh=False)
        if event.message and self.enabled:
            self.write(event.message)

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            click.echo(text, err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run_with_progress(runner, enabled: bool = True) -> None:
    """Run a ``Bootstrap`` to the end with a progress bar per stage on stderr (bars closed on errors too)."""
    bars = StageBars(enabled)
    try:
        for event in runner.run():
            bars(event)
    finally:
        bars.close()


@click.command("bootstrap")
@click.option(
    "--registry",
    default=None,
    metavar="DIR",
    help="registry folder (env PIXELRPC_REGISTRY, default ~/.cache/pixelrpc/registry)",
)
@click.option(
    "--quick",
    is_flag=True,
    help="small models in well under a minute, for tests (lower gates, see pixelrpc.models.bootstrap.QUICK)",
)
@click.option("--force", is_flag=True, help="retrain and publish new versions even if the models exist")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of every random stream")
@click.option(
    "--threads", type=int, default=None, help=f"torch threads (env {THREADS_ENV}; default: min(2, CPUs))"
)
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="keep the generated captioning data set here (default: a temporary folder)",
)
@click.option("--quiet", is_flag=True, help="no progress bars")
@json_option
def bootstrap_command(registry, quick, force, seed, threads, work_dir, quiet, as_json):
    """Train shapes-squeezenet and shapes-captioner on generated scenes, gate them on held-out
    scenes and publish them (models already present are kept unless --force)."""
    import dataclasses

    import torch

    from pixelrpc.models.bootstrap import FULL, QUICK, Bootstrap, GateFailed
    from pixelrpc.models.registry import Registry

    torch.set_num_threads(threads or default_threads())
    plan = dataclasses.replace(QUICK if quick else FULL, seed=seed)
    reg = Registry(registry)
    runner = Bootstrap(reg, plan, force=force, work_dir=work_dir)
    if not as_json:
        click.echo(
            f"bootstrap ({plan.name}) into {reg.root} with {torch.get_num_threads()} torch thread(s)",
            err=True,
        )
    try:
        run_with_progress(runner, enabled=not quiet and not as_json)
    except GateFailed as exc:
        if as_json:
            emit_json({**runner.report.to_json(), "error": exc.message})
        raise
    report = runner.report
    if as_json:
        emit_json(report.to_json())
        return
    for check in report.checks:
        click.echo(f"  {check.model:<18} {check.line()}")
    for ref in report.published.values():
        click.echo(f"  published {ref}")
    for name, why in report.skipped.items():
        click.echo(f"  kept {name}: {why}")
    if report.seconds:
        click.echo(
            f"  {report.seconds.get('total', 0.0):.1f}s in all ("
            + ", ".join(f"{k} {v:.1f}s" for k, v in report.seconds.items() if k != "total")
            + ")"
        )


def register_models(models_group: click.Group) -> None:
    """Add ``bootstrap`` to ``pixelrpc models``."""
    models_group.add_command(bootstrap_command)
