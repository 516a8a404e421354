"""The architecture holds: no import circles (lazy imports inside functions included), and the
worked examples of docs/architecture.md run as written."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

PACKAGE = Path(__file__).resolve().parent.parent / "robust"
ARCHITECTURE_DOC = PACKAGE.parent / "docs" / "architecture.md"


def module_name(path: Path) -> str:
    """`robust/eval/rerank.py` -> `robust.eval.rerank`; a package's `__init__` is the package."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking(test: ast.expr) -> bool:
    """True for `if TYPE_CHECKING:` and `if typing.TYPE_CHECKING:`."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_modules(tree: ast.AST, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """The `robust` modules a module imports anywhere (functions included), except under
    `if TYPE_CHECKING:`. `from robust.x import name` reaches `robust.x.name` when that is a
    module, else `robust.x`."""
    found: set[str] = set()
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and is_type_checking(node.test):
            pending.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in modules else base)
        pending.extend(ast.iter_child_nodes(node))
    return {name for name in found if name in modules and name != module}


def import_graph() -> dict[str, set[str]]:
    """Each module of `robust` -> the `robust` modules it imports."""
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {
        module: imported_modules(
            ast.parse(path.read_text(), filename=str(path)),
            module,
            path.name == "__init__.py",
            set(paths),
        )
        for module, path in paths.items()
    }


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, each sorted, largest first."""
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = lowlink[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                lowlink[node] = min(lowlink[node], lowlink[target])
            elif target in on_stack:
                lowlink[node] = min(lowlink[node], index[target])
        if lowlink[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components, key=lambda c: (-len(c), c))


def test_robust_has_no_import_circles():
    circles = [c for c in strongly_connected(import_graph()) if len(c) > 1]
    assert not circles, "import circles in robust/:\n" + "\n".join(
        " <-> ".join(circle) for circle in circles
    )


def test_the_walk_sees_lazy_imports_and_skips_type_checking_blocks():
    source = """
from typing import TYPE_CHECKING
import robust.a
from robust import b
from robust.c import helper
from .d import thing
if TYPE_CHECKING:
    from robust.e import Hint
def lazy():
    from robust.f import late
"""
    modules = {"robust", "robust.a", "robust.b", "robust.c", "robust.d", "robust.e", "robust.f"}
    modules |= {"robust.pkg", "robust.pkg.d"}
    found = imported_modules(ast.parse(source), "robust.pkg.mod", False, modules)
    assert found == {"robust.a", "robust.b", "robust.c", "robust.pkg.d", "robust.f"}


def test_circles_are_found_with_every_member():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert strongly_connected(graph)[0] == ["a", "b", "c"]
    assert [c for c in strongly_connected(graph) if len(c) > 1] == [["a", "b", "c"]]


def test_the_architecture_doc_examples_run_as_written(tmp_path, monkeypatch):
    """The page's "how to add an attack / a victim family" code, executed verbatim: the
    user's attack and family register from user code and run through `run_matrix`."""
    from robust.data import load_dataset
    from robust.data.images import load_images, to_uint8_array
    from robust.data.world import ZOO_WORLD
    from robust.harness.cache import AdversarialCache
    from robust.victims.registry import load_victim
    from robust.zoo.recipes import world_image_size

    blocks = re.findall(r"```python\n(.*?)```", ARCHITECTURE_DOC.read_text(), re.S)
    assert len(blocks) == 2, "docs/architecture.md should hold the two worked examples"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "architecture_example"}
    for block in blocks:
        exec(compile(block, str(ARCHITECTURE_DOC), "exec", dont_inherit=True), namespace)

    noise, ensemble = namespace["result"], namespace["ensemble"]
    assert noise.tr_asr["sign_noise"].shape == (2, 2)
    assert np.isfinite(noise.tr_asr["sign_noise"]).all()
    assert np.isfinite(ensemble.tr_asr["pgd"]).all()
    # the attack ran as written: no pixel moved beyond eps (8/255, in uint8 steps) and most
    # moved by all of it (the rest were clipped at 0 or 1)
    crafted = AdversarialCache(tmp_path / "runs/noise/cache").entry("sign_noise", "toy-clip-vit", 0)
    adversarial = crafted.load().images.astype(int)
    dataset = load_dataset(f"{ZOO_WORLD}:test-1k", limit=8)
    size = world_image_size(ZOO_WORLD)
    clean = to_uint8_array(load_images(dataset.images, range(8), size, "crop")).astype(int)
    moved = np.abs(adversarial - clean)
    assert moved.max() == 8
    assert np.isin(moved, [7, 8]).mean() > 0.5
    # the family loads by spec and is what it says: the normalised mean of its members
    members = [load_victim("toy-clip-vit"), load_victim("toy-clip-rn")]
    victim = load_victim("ensemble:toy-clip-vit+toy-clip-rn")
    images = load_images(dataset.images, range(4), size, "crop")
    with torch.no_grad():
        expected = F.normalize(sum(m.encode_image(images) for m in members), dim=-1)
        assert torch.allclose(victim.encode_image(images), expected, atol=1e-6)
