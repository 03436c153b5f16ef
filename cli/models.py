"""``pixelrpc models``: list, show, verify, remove and import models of the registry."""

from __future__ import annotations

import click

from pixelrpc.cli.common import CliError, emit_json, json_option

registry_option = click.option("--registry", default=None, metavar="DIR",
                               help="registry folder (env PIXELRPC_REGISTRY, default ~/.cache/pixelrpc/registry)")


def open_registry(path: str | None):
    from pixelrpc.models.registry import Registry

    return Registry(path)


def manifest_json(m) -> dict:
    data = m.to_json()
    data["sha256"] = m.sha256
    data.pop("schema", None)
    return data


@click.group("models")
def models_group():
    """Manage the model registry (local folder, or a running service with --addr)."""


@models_group.command("list")
@registry_option
@click.option("--addr", default=None, metavar="HOST:PORT", help="ask a running service instead")
@click.option("--task", default="", help="only models with this task")
@click.option("--all-versions", is_flag=True, help="every version, not only the default")
@json_option
def list_command(registry, addr, task, all_versions, as_json):
    """List models (default versions unless --all-versions)."""
    if addr:
        from pixelrpc.cli.common import client_kwargs
        from pixelrpc.clients.base import ServiceClient

        with ServiceClient(addr, **client_kwargs()) as c:
            rows = [m.to_json() for m in c.registry.list(task=task, all_versions=all_versions)]
        broken = []
    else:
        reg = open_registry(registry)
        rows = []
        manifests, broken = reg.scan(task or None, all_versions=all_versions)
        for m in manifests:
            row = manifest_json(m)
            row["default"] = reg.default_version(m.name) == m.version
            rows.append(row)
    if as_json:
        emit_json(rows)
        return
    for b in broken:
        click.echo(f"broken: {b.ref}: {b.reason}", err=True)
    if not rows:
        click.echo("no models; add some with 'pixelrpc models bootstrap' or 'pixelrpc models import ...'")
        return
    click.echo(f"{'NAME':<28} {'VER':>4} {'TASKS':<40} {'SHA256':<14} DEFAULT")
    for r in rows:
        click.echo(f"{r['name']:<28} {r['version']:>4} {','.join(r['tasks']):<40} {r['sha256'][:12]:<14} "
                   f"{'*' if r.get('default') else ''}")


@models_group.command("show")
@click.argument("ref")
@registry_option
@json_option
def show_command(ref, registry, as_json):
    """Show the manifest of NAME[:VERSION]."""
    from pixelrpc.models.registry import parse_ref

    name, version = parse_ref(ref)
    m = open_registry(registry).resolve(name, version)
    data = manifest_json(m)
    if as_json:
        emit_json(data)
        return
    click.echo(f"{m.ref}  tasks={','.join(m.tasks)}  framework={m.framework}  created={m.created}")
    click.echo(f"sha256 {m.sha256}")
    for f in m.files:
        click.echo(f"  {f.name:<32} {f.size:>12,} bytes  {f.sha256[:16]}")
    for key, value in sorted(m.metadata.items()):
        text = str(value)
        click.echo(f"  {key}: {text if len(text) < 100 else text[:97] + '...'}")


def _problem(exc) -> str:
    """A short label for why an entry failed verification."""
    from pixelrpc.models.errors import FailedPrecondition, ModelCorrupt, RegistryUnavailable
    from pixelrpc.models.registry import GoldenFailed

    if isinstance(exc, GoldenFailed):
        return "GOLDEN FAILED"
    if isinstance(exc, ModelCorrupt):
        return "CORRUPT"
    if isinstance(exc, RegistryUnavailable):
        return "UNAVAILABLE"
    if isinstance(exc, FailedPrecondition):
        return "INVALID"
    return "ERROR"


@models_group.command("verify")
@click.argument("refs", nargs=-1)
@registry_option
@click.option("--golden", is_flag=True, help="also load each model and run its golden examples")
@click.option("--device", default="cpu", show_default=True, help="device for --golden")
@json_option
def verify_command(refs, registry, golden, device, as_json):
    """Check every manifest and file (all versions of all models, or the given NAME[:VERSION]).

    With no arguments every entry of the registry is checked, broken ones included (unreadable
    folders, manifests that are not files, corrupt or unsealed manifests, invalid names); any
    problem exits non-zero. --golden also runs each version's golden examples.
    """
    from pixelrpc.models.errors import PixelRPCError
    from pixelrpc.models.registry import GoldenFailed, load_model, parse_ref, run_golden

    reg = open_registry(registry)
    results: list[dict] = []
    targets = []
    if refs:
        for ref in refs:
            try:
                targets.append(reg.resolve(*parse_ref(ref)))
            except PixelRPCError as exc:
                results.append({"model": ref, "ok": False, "problem": _problem(exc), "error": exc.message})
    else:
        targets, broken = reg.scan(all_versions=True)
        results += [{"model": b.ref, "ok": False, "problem": _problem(b.error), "error": b.reason} for b in broken]
    for m in targets:
        row: dict = {"model": m.ref, "ok": True}
        try:
            reg.verify(m)
            if golden:
                report = run_golden(m, load_model(reg, m, device), lambda f, m=m: reg.read_file(m, f))
                row["golden"] = report.to_json()
                if not report.passed:
                    raise GoldenFailed(report)
        except PixelRPCError as exc:
            row.update(ok=False, problem=_problem(exc), error=exc.message)
        results.append(row)
    results.sort(key=lambda r: r["model"])
    bad = sum(not r["ok"] for r in results)
    if as_json:
        emit_json(results)
    else:
        for r in results:
            if r["ok"]:
                g = r.get("golden")
                note = "" if g is None else (f" (golden: {g['examples']} passed)" if g["state"] == "passed"
                                             else " (no golden examples)")
                click.echo(f"{r['model']:<32} ok{note}")
            else:
                click.echo(f"{r['model']:<32} {r['problem']}: {r['error']}")
    if bad:
        raise CliError(f"{bad} registry entr{'y' if bad == 1 else 'ies'} failed verification")


@models_group.command("gc")
@registry_option
@click.option("--grace", type=float, default=None, metavar="SECONDS",
              help="only what is older than this (default 600); a live publisher's folder is never removed")
@click.option("--dry-run", is_flag=True, help="list what would be removed")
@json_option
def gc_command(registry, grace, dry_run, as_json):
    """Remove staging folders of killed publishers and leftovers of interrupted removals."""
    reg = open_registry(registry)
    removed = reg.clean_staging(grace, dry_run=dry_run)
    if as_json:
        emit_json({"removed": removed, "dry_run": dry_run})
        return
    for name in removed:
        click.echo(f"{'would remove' if dry_run else 'removed'} {reg.root / name}")
    if not removed:
        click.echo("nothing to clean")


@models_group.command("seal")
@click.argument("refs", nargs=-1)
@registry_option
def seal_command(refs, registry):
    """Seal manifests written before PixelRPC sealed them (all versions, or NAME[:VERSION]).

    A manifest is sealed (given its digest) only after every file matches its sha256; a manifest
    sealed already is left alone, and a corrupt one is never sealed.
    """
    from pixelrpc.models.errors import PixelRPCError
    from pixelrpc.models.registry import parse_ref

    reg = open_registry(registry)
    if refs:
        targets = []
        for ref in refs:
            name, version = parse_ref(ref)
            targets.append((name, version or reg.default_version(name)))
    else:
        targets = [(n, v) for n in reg.names() for v in reg.versions(n)]
    bad = 0
    for name, version in targets:
        try:
            sealed = reg.seal(name, version)
            click.echo(f"{name}:{version:<6} {'sealed' if sealed else 'already sealed'}")
        except PixelRPCError as exc:
            bad += 1
            click.echo(f"{name}:{version:<6} NOT SEALED: {exc.message}")
    if bad:
        raise CliError(f"{bad} manifest(s) could not be sealed")


@models_group.command("remove")
@click.argument("ref")
@registry_option
def remove_command(ref, registry):
    """Remove NAME:VERSION (the version is required)."""
    from pixelrpc.models.registry import parse_ref

    name, version = parse_ref(ref)
    if version == 0:
        raise CliError("give the version to remove: NAME:VERSION")
    open_registry(registry).remove(name, version)
    click.echo(f"removed {name}:{version}")


@models_group.command("set-default")
@click.argument("ref")
@registry_option
def set_default_command(ref, registry):
    """Pin NAME:VERSION as the default version."""
    from pixelrpc.models.registry import parse_ref

    name, version = parse_ref(ref)
    open_registry(registry).set_default(name, version)
    click.echo(f"default of {name} is now {version}")


@models_group.group("import")
def import_group():
    """Import a model from an outside file into the registry."""


def _load_extensions() -> None:
    """Sources of ``models import`` (register_import(group)) and other model commands (register_models)."""
    from pixelrpc.cli import bootstrap, models_import, models_sync

    models_import.register_import(import_group)
    bootstrap.register_models(models_group)
    models_sync.register_models(models_group)


def register(group: click.Group) -> None:
    _load_extensions()
    group.add_command(models_group)
