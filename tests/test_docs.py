"""The documentation stays navigable and true to its sources.

- every RPC, message, field, enum and enum value of the protos has a comment (docs/api.md is made of them);
- docs/api.md and the settings table of docs/configuration.md match what their scripts generate now;
- every ``Settings`` field appears in docs/configuration.md;
- README.md stays at most 10 KB;
- every relative link of README.md, docs/ and the module READMEs points at a file that exists, and at
  a heading or anchor that exists in it.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import re
import subprocess
import sys

import pytest
from conftest import REPO

from pixelrpc.services.settings import Settings

README_LIMIT = 10 * 1024
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted(REPO.glob("models/*/README.md")),
         REPO / "docker" / "README.md", REPO / "bench" / "README.md"]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_rpc_message_field_and_enum_value_has_a_comment():
    _, missing = _script("gen_api_docs").render()
    assert missing == [], "add a comment in protos/pixelrpc/v1/*.proto for each"


@pytest.mark.parametrize("script", ["gen_api_docs", "gen_config_docs"])
def test_generated_docs_are_current(script):
    out = subprocess.run([sys.executable, str(REPO / "scripts" / f"{script}.py")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr + "\n(run `make docs` and commit)"


def test_api_reference_lists_every_service_and_rpc():
    text = (REPO / "docs" / "api.md").read_text()
    protos = sorted((REPO / "protos" / "pixelrpc" / "v1").glob("*.proto"))
    assert protos
    for proto in protos:
        module = importlib.import_module(f"pixelrpc.v1.{proto.stem}_pb2")
        for service in module.DESCRIPTOR.services_by_name.values():
            assert f"### service `{service.name}`" in text
            for method in service.methods:
                assert f"| `{method.name}` |" in text, method.full_name
        for message in module.DESCRIPTOR.message_types_by_name.values():
            assert f"### message `{message.name}`" in text
            for field in message.fields:
                assert f"| `{field.name}` | {field.number} |" in text, field.full_name


def test_every_setting_is_documented():
    text = (REPO / "docs" / "configuration.md").read_text()
    missing = [f.name for f in dataclasses.fields(Settings)
               if f.name != "extra" and f"`PIXELRPC_{f.name.upper()}`" not in text]
    assert missing == []


def test_readme_is_at_most_10_kb():
    size = len((REPO / "README.md").read_bytes())
    assert size <= README_LIMIT, f"README.md is {size} bytes; move details into docs/"


def _anchors(path) -> set[str]:
    """GitHub's heading slugs of a Markdown file, plus its explicit ``<a id=...>`` anchors."""
    text = path.read_text()
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    anchors = set(re.findall(r'<a id="([^"]+)"', text))
    for heading in re.findall(r"^#{1,6} (.+)$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def test_relative_links_resolve():
    broken = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):
                continue
            file_part, _, fragment = target.partition("#")
            dest = (page.parent / file_part).resolve() if file_part else page
            where = f"{page.relative_to(REPO)} -> {target}"
            if not dest.exists():
                broken.append(where + " (no such file)")
            elif fragment and dest.suffix == ".md" and fragment not in _anchors(dest):
                broken.append(where + " (no such heading)")
    assert broken == []
