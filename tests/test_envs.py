"""The per-rule-group conda environments (envs/): pins equal to the versions the tests run with,
two groups that differ (the scverse one without torch), every `conda:` naming an env file, and
the scverse rules' scripts importing no torch. CI has no conda, so the envs are checked, not built."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, packages_distributions, requires, version

import pytest
import yaml
from conftest import REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ENVS = REPO / "envs"
RULES = REPO / "workflow" / "rules"
TORCH = {"torch", "torchvision", "timm", "scvi-tools"}
# third-party modules imported inside functions (so not seen by importing the scripts' modules)
# that the group's rules call: WSI backends, scanpy's count reader, Leiden/faiss, plots, encoders
LAZY = {
    "scverse": ["openslide", "tifffile", "zarr", "scanpy", "faiss", "igraph", "leidenalg", "matplotlib", "sklearn"],
    "torch-gpu": ["openslide", "tifffile", "zarr", "timm", "safetensors", "scvi", "matplotlib", "sklearn"],
}


def env_files():
    return sorted(ENVS.glob("*.yaml"))


def pip_pins(path) -> dict[str, str]:
    deps = yaml.safe_load(path.read_text())["dependencies"]
    lines = [line for dep in deps if isinstance(dep, dict) for line in dep["pip"]]
    pins = {}
    for line in lines:
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", line)
        assert match, f"{path.name}: pip line {line!r} is not name==version (tissuekd: post-deploy script)"
        pins[canonicalize_name(match[1])] = match[2]
    return pins


def rule_blocks() -> list[tuple[str, str, str | None, str | None]]:
    """(file, rule, conda env path as written, script path as written) for every rule."""
    out = []
    for smk in sorted(RULES.glob("*.smk")):
        text = smk.read_text()
        for block in re.split(r"\n(?=\s*rule \w+:)", text):
            name = re.search(r"^\s*rule (\w+):", block, re.M)
            if not name:
                continue
            conda = re.search(r"\bconda:\s*\n(?:\s*#.*\n)*\s*\"([^\"]+)\"", block)
            script = re.search(r"\bscript:\s*\n\s*\"([^\"]+)\"", block)
            out.append((smk.name, name[1], conda and conda[1], script and script[1]))
        n_conda = len(re.findall(r"^\s*conda:", text, re.M))
        assert n_conda == sum(1 for f, _, c, _ in out if f == smk.name and c), f"{smk.name}: unparsed conda:"
    return out


def group_scripts(env: str) -> list:
    return [(RULES / script).resolve() for _, _, conda, script in rule_blocks()
            if conda and (RULES / conda).resolve() == ENVS / f"{env}.yaml" and script]


def closure(pins: dict[str, str]) -> set[str]:
    """The pinned distributions and everything they require (extras not taken), as installed here."""
    seen, todo = set(), list(pins)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            reqs = requires(name) or []
        except PackageNotFoundError:
            continue
        for req in map(Requirement, reqs):
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(req.name))
    return seen


def test_every_pin_is_the_version_the_tests_run_with():
    """A pin that differs from the installed version fails here: update the env file (or the test env)."""
    drift = []
    for path in env_files():
        deps = yaml.safe_load(path.read_text())["dependencies"]
        assert f"python={sys.version_info.major}.{sys.version_info.minor}" in deps, (path.name, deps)
        for name, pinned in pip_pins(path).items():
            try:
                installed = version(name)
            except PackageNotFoundError:
                installed = "not installed"
            if installed != pinned:
                drift.append(f"{path.name}: {name}=={pinned}, tests run with {installed}")
    assert not drift, "\n".join(drift)


def test_the_install_constraints_are_the_envs_pins():
    """The README's install commands (and CI) install with `-c envs/constraints.txt`: the envs'
    pins, so a fresh machine tests the versions the envs name instead of the newest releases."""
    lines = [ln for ln in (ENVS / "constraints.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    constraints = dict(ln.split("==") for ln in lines)
    constraints = {canonicalize_name(n): v for n, v in constraints.items()}
    runner = {n: constraints.pop(n) for n in list(constraints) if n.startswith("snakemake")}
    pinned = {}
    for path in env_files():
        pinned.update(pip_pins(path))
    assert constraints == pinned
    drift = {n: (v, version(n)) for n, v in runner.items() if version(n) != v}  # the runner's own pins
    assert {"snakemake", "snakemake-executor-plugin-slurm"} <= set(runner) and not drift, drift
    for command in (REPO / "README.md").read_text().split("```bash")[1:3]:
        assert "-c envs/constraints.txt" in command.split("```")[0]
    assert "-c envs/constraints.txt" in (REPO / ".ci" / "run").read_text()


def test_the_two_groups_differ_and_the_scverse_one_has_no_torch():
    assert [p.name for p in env_files()] == ["scverse.yaml", "torch-gpu.yaml"]
    scverse, gpu = pip_pins(ENVS / "scverse.yaml"), pip_pins(ENVS / "torch-gpu.yaml")
    assert scverse != gpu
    assert TORCH <= set(gpu)
    assert not TORCH & closure(scverse), TORCH & closure(scverse)  # nor anything it pulls in


def test_each_env_installs_tissuekd_without_dependencies():
    """pip lines cannot say --no-deps, so a post-deploy script beside each env file installs the
    checkout; a plain `-e ..` would bring pyproject's full list (torch) into every env."""
    scripts = [p.with_suffix(".post-deploy.sh") for p in env_files()]
    texts = {p.read_text() for p in scripts}
    assert len(texts) == 1
    assert "pip install --no-deps -e" in texts.pop()
    assert "TISSUEKD_ROOT" in (RULES / "common.smk").read_text()


def test_every_conda_directive_names_an_env_file_and_every_env_is_used():
    used = {(RULES / conda).resolve() for _, _, conda, _ in rule_blocks() if conda}
    assert used == {p.resolve() for p in env_files()}, used


def imported_names(path, *, in_functions: bool) -> set[str]:
    """Absolute imports of a file: all of them, or only those run on import (not in functions)."""
    names, todo = set(), [ast.parse(path.read_text())]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module)
        if in_functions or not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            todo.extend(ast.iter_child_nodes(node))
    return names


@pytest.mark.parametrize("env", ["scverse", "torch-gpu"])
def test_the_group_imports_only_packages_its_env_pins(env):
    """What the group's scripts import, and the tissuekd modules they load import on import, is
    pinned in its env (with LAZY, also what the called functions import inside); for scverse,
    importing all of it loads no torch."""
    modules = set().union(*(imported_names(p, in_functions=True) for p in group_scripts(env)))
    assert modules
    code = ("import importlib, json, sys\n"
            "for m in sys.argv[1:]: importlib.import_module(m)\n"
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code, *sorted(modules)], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    loaded = set(json.loads(out.stdout))
    if env == "scverse":
        assert "torch" not in loaded, "a scverse rule imports torch"
    for name in loaded:
        if name == "tissuekd" or name.startswith("tissuekd."):
            base = REPO / "src" / name.replace(".", "/")
            source = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
            if source.exists():  # survival/ is a namespace package
                modules |= imported_names(source, in_functions=False)
    top = {m.split(".")[0] for m in modules | set(LAZY[env])} - set(sys.stdlib_module_names) - {"tissuekd"}
    dists = packages_distributions()
    needed = {canonicalize_name(d) for m in top for d in dists[m]}
    missing = needed - set(pip_pins(ENVS / f"{env}.yaml"))
    assert not missing, f"{env}.yaml does not pin {sorted(missing)}"
