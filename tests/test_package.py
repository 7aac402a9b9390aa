"""The package's shape: no import cycles, a model file that imports only the fast paths, a one-line job
for every module, and a repository that cites only its own files."""

import ast
import subprocess

from conftest import ROOT

PACKAGE = ROOT / "smollm2"


def package_imports() -> dict[str, set[str]]:
    """module -> the smollm2 modules it imports anywhere in its body (function-level imports included)."""
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    graph = {}
    for name in modules:
        deps = set()
        for node in ast.walk(ast.parse((PACKAGE / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "smollm2":
                parts = node.module.split(".")
                deps |= {alias.name for alias in node.names if alias.name in modules} if len(parts) == 1 else {parts[1]}
            elif isinstance(node, ast.Import):
                deps |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("smollm2.")}
        graph[name] = deps - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node) :] + [node]
        if node in done:
            return None
        for dep in sorted(graph[node]):
            if cycle := visit(dep, path + [node]):
                return cycle
        done.add(node)
        return None

    for start in sorted(graph):
        if cycle := visit(start, []):
            return cycle
    return None


def test_no_import_cycle_inside_the_package():
    assert find_cycle(package_imports()) is None, " -> ".join(find_cycle(package_imports()))


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_model_imports_nothing_of_ours_but_the_fast_paths():
    assert package_imports()["model"] == {"ops"}
    # The config's model section is the model's own config class (one definition of the architecture).
    assert package_imports()["config"] <= {"atomic", "errors", "model"}
    config_imports = {
        alias.name.split(".")[0]
        for node in ast.walk(ast.parse((PACKAGE / "config.py").read_text()))
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])
    }
    assert "torch" not in config_imports


def test_every_module_says_its_one_job_first():
    for path in sorted(PACKAGE.glob("*.py")):
        docstring = ast.get_docstring(ast.parse(path.read_text()))
        assert docstring, f"{path.name}: no module docstring"
        first = docstring.splitlines()[0]
        assert first.endswith((".", ":")) and len(first) <= 120, f"{path.name}: {first!r}"


def test_readme_file_table_names_every_module():
    readme = (ROOT / "README.md").read_text()
    for path in sorted(PACKAGE.glob("*.py")):
        if path.name not in ("__init__.py", "__main__.py"):
            assert f"smollm2/{path.name}" in readme, f"README.md's file table misses smollm2/{path.name}"


def test_code_cites_only_files_of_this_repository():
    tracked = subprocess.run(
        ["git", "ls-files", "smollm2", "tests", "launch", "configs", "docker"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    outside = ["hf_baseline", "cpu-feasibility", "../shared", "shared/notes"]
    for name in tracked:
        text = (ROOT / name).read_text(errors="replace")
        if name == "tests/test_package.py":
            continue  # names them, to look for them
        for word in outside:
            assert word not in text, f"{name} cites {word}"
        assert "design.md" not in text.replace("docs/design.md", ""), f"{name} cites a design.md outside docs/"
    assert (ROOT / "docs" / "design.md").is_file()
