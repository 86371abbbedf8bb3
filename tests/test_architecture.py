"""The house rules: floors that only import downwards, no import circles, small modules, no
process-global state, a help text on every command, and a config schema generated from the
declarations beside the science functions."""
import argparse
import ast
import contextlib
import io
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "topoland"
MAX_LINES = 600


def _modules():
    return sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def test_import_linter_contracts_hold(monkeypatch):
    """The layers, forbidden and acyclic-siblings contracts of pyproject.toml (``lint-imports``)."""
    from importlinter.cli import lint_imports
    monkeypatch.chdir(ROOT)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True)
    assert code == 0, out.getvalue()[-4000:]


def test_no_import_cycle_between_any_two_modules():
    """Module level, function-local imports included (grimp reads every import statement)."""
    import grimp
    import networkx as nx
    graph = grimp.build_graph("topoland")
    g = nx.DiGraph()
    for m in graph.modules:
        for imported in graph.find_modules_directly_imported_by(m):
            g.add_edge(m, imported)
    cycles = [sorted(c) for c in nx.strongly_connected_components(g) if len(c) > 1]
    assert not cycles, f"import circles: {cycles}"


def test_every_module_is_under_600_lines():
    long = {str(p.relative_to(ROOT)): n for p in _modules() if (n := len(p.read_text().splitlines())) >= MAX_LINES}
    assert not long, f"modules of {MAX_LINES}+ lines: {long}"


def _module_level_mutables(path):
    tree = ast.parse(path.read_text())
    bad = [f"{path.relative_to(ROOT)}:{n.lineno}: global statement" for n in ast.walk(tree) if isinstance(n, ast.Global)]
    for node in tree.body:
        value = getattr(node, "value", None)
        empty = (isinstance(value, (ast.Dict, ast.List, ast.Set)) and not getattr(value, "keys", getattr(value, "elts", None))
                 ) or (isinstance(value, ast.Call) and getattr(value.func, "id", "") in ("dict", "list", "set")
                       and not value.args and not value.keywords)
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and empty:
            bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: empty module-level container (filled at run time?)")
    return bad


def test_no_process_global_state():
    """No ``global`` statements and no empty module-level containers that code fills at run time
    (caches, registries, overrides): state lives in objects that are passed along."""
    bad = [line for p in _modules() for line in _module_level_mutables(p)]
    assert not bad, "\n".join(bad)


def _commands():
    from topoland.cli.main import build_parser
    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, dict(subs.choices)


def test_every_command_has_a_help_that_teaches():
    from topoland.cli.main import main
    _, commands = _commands()
    assert {"run", "train", "list", "info", "config", "verify", "sample", "topology", "curvature", "report",
            "compare", "surface", "neb", "connect"} <= set(commands)
    for name, sub in commands.items():
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as e:
            main([name, "--help"])
        text = out.getvalue()
        assert e.value.code == 0 and text.startswith(f"usage: topoland {name}"), name
        assert sub.description and len(sub.description.split()) >= 5, f"'{name}' has no description"


def test_the_stage_list_in_the_help_comes_from_the_stage_names():
    from topoland.runs.stages import STAGES, stage_list
    parser, commands = _commands()
    text = commands["run"].format_help()
    assert stage_list(STAGES) in " ".join(text.split())


# ------------------------------------------------------------------ config from the declarations
def test_a_declared_parameter_appears_in_the_schema_keys_and_validation(monkeypatch):
    from topoland.declare import Param
    from topoland.errors import ConfigError
    from topoland.runs.config import describe_schema, validate
    from topoland.runs.schema import schema
    from topoland.sampling import jump_and_retrain
    assert "chunk_size" not in schema()["sample"]
    new = Param((int,), 0, lambda v: None if v >= 0 else "must be >= 0", "points per vmap chunk (0 = auto)")
    monkeypatch.setitem(jump_and_retrain.parameters, "chunk_size", new)
    assert schema()["sample"]["chunk_size"] is new
    assert any(line.split()[:1] == ["chunk_size"] and "points per vmap chunk" in line
               for line in describe_schema().splitlines())
    assert validate({"sample": {"chunk_size": 8}})["sample"]["chunk_size"] == 8
    assert validate({})["sample"]["chunk_size"] == 0
    with pytest.raises(ConfigError, match="sample.chunk_size"):
        validate({"sample": {"chunk_size": -1}})


def test_the_config_keys_command_prints_the_generated_schema():
    from topoland.cli.main import main
    from topoland.runs.schema import schema
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["config", "--keys"]) == 0
    text = out.getvalue()
    for section, keys in schema().items():
        assert f"[{section}]" in text
        for key, p in keys.items():
            assert any(line.split()[:1] == [key] and p.help in line for line in text.splitlines()), f"{section}.{key}"


def test_a_declaration_must_name_arguments_the_function_takes():
    from topoland.declare import Param, declare

    def f(x, *, a=1):
        return x + a
    declare({"a": Param((int,), 1)})(f)
    assert list(f.parameters) == ["a"]
    with pytest.raises(TypeError, match="'b'"):
        declare({"b": Param((int,), 1)})(f)


def test_a_stage_passes_its_section_through():
    """:func:`topoland.declare.arguments` maps a section onto the function's keywords: converted,
    grouped into dict keywords (PHATE's), keys the function does not declare left out."""
    from topoland.declare import arguments
    from topoland.runs.config import validate
    from topoland.topology import topology_of_samples
    opts = validate({"topology": {"knn": 7, "n_landmark": 0}})["topology"]
    kw = arguments(topology_of_samples, opts, seed=3)
    assert kw["phate_kwargs"] == {"knn": 7, "decay": 40, "t": 20, "n_landmark": None}
    assert kw["k"] == 20 and kw["seed"] == 3 and "knn" not in kw


def test_estimators_mirror_the_function_they_wrap():
    """LossTopology takes every keyword topology_of_samples does (no drift between the two)."""
    import inspect

    from topoland.topology import LossTopology, topology_of_samples
    fn = {n for n, p in inspect.signature(topology_of_samples).parameters.items() if p.kind == p.KEYWORD_ONLY}
    est = set(inspect.signature(LossTopology).parameters)
    assert fn - {"picture"} <= est, fn - est


def test_no_public_name_of_a_face_is_also_a_submodule_name():
    """A lazy face caches a name on first use; importing a submodule of the same name later would
    replace the function by the module (``from topoland.landscape import barriers`` once was)."""
    import importlib
    import pkgutil
    for pkg in ("topoland", "topoland.nets", "topoland.train", "topoland.sampling", "topoland.topology",
                "topoland.landscape", "topoland.analysis", "topoland.plots", "topoland.report", "topoland.runs"):
        mod = importlib.import_module(pkg)
        subs = {m.name for m in pkgutil.iter_modules(mod.__path__)}
        clash = subs & set(getattr(mod, "__all__", ()))
        assert not clash, (pkg, clash)
