"""The library as a product (docs/design.md §6.12): a documented, typed public API."""

import inspect
import os
import subprocess
import sys

import pytest

import kvmstat

PACKAGE_DIR = os.path.dirname(kvmstat.__file__)
REPO_ROOT = os.path.dirname(PACKAGE_DIR)
TYPE_ALIASES = {"FieldValues", "Totals", "Histograms"}


def public_members(cls):
    for name, member in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(member, property):
            yield name, member.fget
        elif isinstance(member, (staticmethod, classmethod)):
            yield name, member.__func__
        elif inspect.isfunction(member):
            yield name, member


def check_signature(func, where):
    sig = inspect.signature(func)
    for p in sig.parameters.values():
        if p.name in ("self", "cls") or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        assert p.annotation is not inspect.Parameter.empty, f"{where}: parameter {p.name} has no type"
    assert sig.return_annotation is not inspect.Signature.empty, f"{where}: no return type"


@pytest.mark.parametrize("name", [n for n in kvmstat.__all__ if n != "__version__"])
def test_every_public_name_is_documented_and_typed(name):
    obj = getattr(kvmstat, name)
    if name in TYPE_ALIASES:
        return  # typing aliases, documented in the module docstring
    assert inspect.getdoc(obj), f"kvmstat.{name} has no docstring"
    if inspect.isclass(obj):
        for member_name, member in public_members(obj):
            where = f"kvmstat.{name}.{member_name}"
            assert member.__doc__, f"{where} has no docstring"
            check_signature(member, where)
    elif callable(obj):
        check_signature(obj, f"kvmstat.{name}")


def test_the_api_covers_the_spec():
    # list fields, open providers (host or VM), samples, VMs with names, per-VM breakdowns
    for name in ("list_fields", "open_providers", "open_sampler", "Sampler", "Sample",
                 "list_vms", "find_vm", "find_vm_by_name", "VM", "Error", "KvmCollector"):
        assert name in kvmstat.__all__
    assert "pid" in inspect.signature(kvmstat.open_sampler).parameters
    assert "by_vm" in inspect.signature(kvmstat.open_sampler).parameters
    assert {"by_vm", "vm_names", "values"} <= set(inspect.signature(kvmstat.Sample).parameters)
    # every provider, histograms, and the diagnosis of the host
    for name in ("TracepointProvider", "DebugfsProvider", "BinstatsProvider",
                 "HistogramValues", "check_host", "format_check", "HostCheck"):
        assert name in kvmstat.__all__
    for cls in (kvmstat.TracepointProvider, kvmstat.DebugfsProvider, kvmstat.BinstatsProvider):
        assert issubclass(cls, kvmstat.Provider)
    assert "histograms" in inspect.signature(kvmstat.open_sampler).parameters


def test_every_exception_derives_from_error():
    errors = [getattr(kvmstat, n) for n in kvmstat.__all__
              if inspect.isclass(getattr(kvmstat, n)) and issubclass(getattr(kvmstat, n), BaseException)]
    assert len(errors) >= 8
    assert all(issubclass(e, kvmstat.Error) for e in errors)


def test_import_is_light_and_silent():
    """No exporter until the collector is asked for; nothing printed."""
    code = ("import sys, kvmstat; assert 'kvmstat.frontends.exporter' not in sys.modules; "
            "kvmstat.KvmCollector; assert 'kvmstat.frontends.exporter' in sys.modules")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO_ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == out.stderr == ""


def test_the_command_loads_only_what_its_default_mode_needs():
    """kvm_stat's start-up (benchmarks/bench_scale.py) does not pay for the other
    providers or the exporter until they are asked for."""
    # (The BPF engine is not in this list: --engine auto, the default, uses it.)
    heavy = ("kvmstat.providers.debugfs", "kvmstat.providers.binstats", "kvmstat.frontends.exporter",
             "prometheus_client", "hypothesis")
    code = ("import sys, kvmstat.frontends.cli, kvmstat.sampling.sources, kvmstat.frontends.logger, kvmstat.frontends.tui; "
            f"print(*[m for m in {heavy!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO_ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError):
        kvmstat.no_such_name


def test_py_typed_ships_with_the_package():
    assert os.path.isfile(os.path.join(PACKAGE_DIR, "py.typed"))
    with open(os.path.join(REPO_ROOT, "pyproject.toml")) as f:
        pyproject = f.read()
    section = pyproject.split("[tool.setuptools.package-data]", 1)[1].split("\n[", 1)[0]
    assert '"py.typed"' in section
    with open(os.path.join(REPO_ROOT, "MANIFEST.in")) as f:
        assert "py.typed" in f.read()
