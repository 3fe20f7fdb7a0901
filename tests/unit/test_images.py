"""The Dockerfiles cannot be built here (no Docker engine); these checks catch what
breaks them most often: an entrypoint naming a module that does not exist,
COPY sources that moved, unpinned bases, root users, torch in the operator image."""

import json
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGES = {
    "operator/Dockerfile": "kubenas_operator",
    "controller_image/Dockerfile": "kubenas_controller",
    "trainer_image/Dockerfile": "kubenas_trainer",
}


def instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


@pytest.mark.parametrize("dockerfile, package", IMAGES.items())
def test_entrypoint_runs_a_module_of_this_repository(dockerfile, package):
    entry = [args for op, args in instructions(ROOT / dockerfile) if op == "ENTRYPOINT"]
    assert len(entry) == 1
    argv = json.loads(entry[0])
    assert argv[:2] == ["python", "-m"] and argv[2] == package
    package_dir = ROOT / Path(dockerfile).parent / package
    assert (package_dir / "__main__.py").is_file(), f"{package} has no __main__.py"


@pytest.mark.parametrize("dockerfile", IMAGES)
def test_copy_sources_exist_and_are_not_ignored(dockerfile):
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    allowed = [line[1:].rstrip("/*") for line in ignore if line.startswith("!")]
    for op, args in instructions(ROOT / dockerfile):
        if op == "COPY" and "--from" not in args:
            *sources, _dest = args.split()
            for source in sources:
                assert (ROOT / source).exists(), f"{dockerfile}: COPY {source} does not exist"
                assert any(source == a or source.startswith(a + "/") or a.startswith(source) for a in allowed), \
                    f"{dockerfile}: {source} is excluded by .dockerignore"


@pytest.mark.parametrize("dockerfile", IMAGES)
def test_bases_are_pinned_and_the_user_is_not_root(dockerfile):
    ops = instructions(ROOT / dockerfile)
    args = dict(a.split("=", 1) for op, a in ops if op == "ARG" and "=" in a)
    for op, base in ops:
        if op == "FROM":
            image = base.split()[0]
            image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), image)
            if ":" not in image:
                continue  # a build stage name
            tag = image.rsplit(":", 1)[1]
            assert tag != "latest" and re.search(r"\d+\.\d+", tag), f"{dockerfile}: base {image} is not pinned"
    users = [a for op, a in ops if op == "USER"]
    assert users and users[-1] not in ("root", "0")


def test_operator_image_carries_no_torch():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert not any(dep.startswith("torch") for dep in extras["operator"])
    assert "torch" not in (ROOT / "operator/Dockerfile").read_text().replace("no torch", "")
