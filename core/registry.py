"""The suite's component registries: mask strategies, reconstruction targets, encoder architectures
and evaluation protocols, each registered once where it is written (as timm's `register_model`),
from the suite or from a researcher's own folder or package (plugins, docs/extending.md).

    from core.registry import MASKS, Param
    from core.settings import Range

    @MASKS.register("center", help="patches near the centre masked more often")
    def center_mask(batch, grid, ratio, generator): ...

    @TARGETS.register("lowpass", params=[Param("model.lowpass_sigma", 1.0, Range(0, None, lo_open=True),
                                               "lowpass target: blur sigma in pixels")])
    class LowpassTarget(Target): ...

A registration is the single source of truth: the settings' allowed values (model.mask_strategy,
model.target, model.arch), `run_all.py config` and `list`, the tests and Figure 6 read it. A
component's parameters are declared with it: they become config keys, are checked and shown from
the declaration, and enter the run id only of runs that use the component (core/config.py).

This module is plain Python (no torch) and sits at the bottom of the import layers. The built-in
components register from their own modules (torch-using ones among them), so a registry imports its
`homes` the first time it is asked what it holds; plugins (MAE_PLUGINS) load at the same moment.
Config validation is the first asker: build_config knows every component, the user's included.
"""
from __future__ import annotations

import importlib
import os
import pkgutil
import sys
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable

from core.errors import ConfigError, UserError
from core.settings import Check, Setting

PLUGINS_ENV = "MAE_PLUGINS"  # folders, .py files or module names, separated by os.pathsep


@dataclass(frozen=True)
class Param:
    """A setting a component reads, declared beside it: a config key with its default and check."""
    key: str  # dotted config key, e.g. "model.lowpass_sigma"
    default: object
    check: Check
    help: str  # one line, shown by `run_all.py config`
    source: str = ""  # the paper's table, if any
    # (the config's section of the key) -> whether the component reads it in this config; a key it
    # does not read stays out of the run id (dvae_token's tokenizer settings with a DALL-E file)
    applies: Callable | None = None

    @property
    def setting(self) -> Setting:
        return Setting(self.help, self.check, self.source)

    @property
    def type(self):
        return type(self.default)


@dataclass(frozen=True)
class Entry:
    name: str
    obj: object  # the function, class or data the suite calls
    help: str
    params: tuple = ()
    check: Callable | None = None  # (cfg) -> None; raises ConfigError: rules between it and other keys
    extra: dict = field(default_factory=dict)  # what a kind needs besides (a strategy's Figure 6 ratio)
    module: str = ""


class Registry(Mapping):
    """name -> the registered object (a Mapping, so `TARGETS[name]` and `name in MASKS` read as the dicts
    they replace); `entry(name)` gives the declaration."""

    def __init__(self, kind: str, key: str | None, homes: tuple = ()):
        self.kind, self.key, self.homes = kind, key, homes  # key: the config key that selects one
        self._entries: dict[str, Entry] = {}
        self._loaded = False

    def register(self, name: str, obj=None, *, help: str = "", params=(), check=None, **extra):
        """Register `obj` under `name`; without `obj`, a decorator. Registering a name twice is an error
        (a plugin cannot silently replace the suite's baseline)."""
        caller = sys._getframe(1).f_globals.get("__name__", "")  # where data (an arch's dict) was registered

        def add(o):
            if name in self._entries and _origin(self._entries[name].obj) != _origin(o):
                raise UserError(f"two {self.kind}s are registered as {name!r} ({self._entries[name].module} and "
                                f"{getattr(o, '__module__', '?')})")
            if isinstance(o, type) and hasattr(o, "name"):  # a registered class knows its name (Target.name)
                o.name = name
            doc = help or (getattr(o, "__doc__", None) or "").strip().split("\n")[0]
            entry = Entry(name, o, doc.rstrip("."), tuple(params), check, dict(extra),
                          getattr(o, "__module__", None) or caller)
            for p in entry.params:
                _claim(p, self, name)
            self._entries[name] = entry
            return o
        return add if obj is None else add(obj)

    def load(self) -> "Registry":
        """Import the modules that register the built-in components, then the plugins (once)."""
        if not self._loaded:
            self._loaded = True  # first: a home that reads its own registry while importing does not recurse
            for home in self.homes:
                importlib.import_module(home)
            load_plugins()
        return self

    def entry(self, name: str) -> Entry:
        self.load()
        if name not in self._entries:
            raise ConfigError(f"{self.key or self.kind}={name!r} is not one of: {', '.join(self._entries)}"
                              + plugin_hint())
        return self._entries[name]

    def entries(self) -> list[Entry]:
        return list(self.load()._entries.values())

    def __getitem__(self, name):
        self.load()
        return self._entries[name].obj

    def __iter__(self):
        return iter(list(self.load()._entries))

    def __len__(self):
        return len(self.load()._entries)

    def __contains__(self, name):
        return name in self.load()._entries


def _origin(obj) -> tuple:
    """Where an object was defined: the same definition imported again (a test reloading a plugin) is
    the same component, another one under the same name is not."""
    return (getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)) if callable(obj) else (id(obj),)


@dataclass(frozen=True, eq=False)
class Registered(Check):
    """A setting that names a component of `registry` (model.target, ...): its allowed values are the
    registry's names, whoever registered them."""
    registry: Registry

    def error(self, value):
        return None if value in self.registry else f"is not one of: {', '.join(self.registry)}{plugin_hint()}"

    def describe(self):
        return " | ".join(self.registry)


# Every component parameter: config key -> (registry, component name, Param)
PARAMS: dict[str, tuple] = {}


def _claim(p: Param, registry: Registry, name: str) -> None:
    if "." not in p.key:
        raise UserError(f"parameter {p.key!r} of {registry.kind} {name!r} must be a dotted config key like "
                        f"model.{p.key}")
    held = PARAMS.get(p.key)
    if held and (held[0], held[1]) != (registry, name):
        raise UserError(f"config key {p.key} is declared by {held[0].kind} {held[1]!r} and by {registry.kind} {name!r}")
    bad = p.check.error(p.default) if p.default is not None and not isinstance(p.default, bool) else None
    if bad:
        raise UserError(f"parameter {p.key} of {registry.kind} {name!r}: its default {bad}")
    PARAMS[p.key] = (registry, name, p)


def component_params() -> dict[str, tuple]:
    """Every declared parameter, built-in and plugin ones: key -> (registry, component, Param)."""
    for reg in REGISTRIES:
        if reg.key:  # the ones a config selects; a protocol's settings are its eval.<section>
            reg.load()
    return PARAMS


def selected(registry: Registry, flat: dict) -> str | None:
    """The component of `registry` a flat config selects."""
    return flat.get(registry.key) if registry.key else None


# The registries. `homes`: the modules whose import registers the built-in components.
MASKS = Registry("mask strategy", "model.mask_strategy", ("core.masking",))
TARGETS = Registry("reconstruction target", "model.target", ("core.targets",))
ARCHS = Registry("encoder architecture", "model.arch", ("core.archs",))
PROTOCOLS = Registry("evaluation protocol", None, ("core.eval",))
REGISTRIES = (MASKS, TARGETS, ARCHS, PROTOCOLS)


# ---- plugins: components and ablations kept outside the repository
_plugins: list = []  # the modules loaded, in order (core.ablation finds their ABLATIONs)
_plugins_from: str | None = None


def plugin_entries() -> list[str]:
    return [e for e in os.environ.get(PLUGINS_ENV, "").split(os.pathsep) if e.strip()]


def plugin_hint() -> str:
    return "" if plugin_entries() else f" (components kept outside the suite load with {PLUGINS_ENV}, docs/extending.md)"


def load_plugins() -> list:
    """Import every entry of MAE_PLUGINS once: a folder (each module and package in it), a .py file, or
    an importable module or package name (with every submodule). A plugin that fails to import is one
    line naming it and where it failed."""
    global _plugins, _plugins_from
    spec = os.environ.get(PLUGINS_ENV, "")
    if _plugins_from == spec:
        return _plugins
    _plugins_from, _plugins = spec, []  # a module imported before is not imported again, only listed
    for entry in plugin_entries():
        for name in _plugin_modules(entry.strip()):
            _plugins.append(_import(name, entry))
    return _plugins


def _plugin_modules(entry: str) -> list[str]:
    path = os.path.abspath(os.path.expanduser(entry))
    if os.path.isdir(path):
        _on_path(path)
        return [m.name for m in sorted(pkgutil.iter_modules([path]), key=lambda m: m.name) if not m.name.startswith("_")]
    if entry.endswith(".py"):
        if not os.path.isfile(path):
            raise UserError(f"{PLUGINS_ENV} entry {entry!r}: no such file")
        _on_path(os.path.dirname(path))
        return [os.path.basename(path)[:-3]]
    if os.sep in entry or entry.startswith("."):
        raise UserError(f"{PLUGINS_ENV} entry {entry!r}: no such folder")
    return [entry]


def _on_path(folder: str) -> None:
    if folder not in sys.path:
        sys.path.insert(0, folder)


def _import(name: str, entry: str):
    try:
        module = importlib.import_module(name)
        subs = [importlib.import_module(f"{name}.{m.name}") for m in pkgutil.iter_modules(getattr(module, "__path__", []))
                if not m.name.startswith("_")]
    except UserError:
        raise
    except ModuleNotFoundError as e:
        if e.name == name:
            raise UserError(f"{PLUGINS_ENV} entry {entry!r}: no folder, file or importable module of that name") from None
        raise UserError(_failed(name, entry, e)) from None
    except Exception as e:  # noqa: BLE001 - the researcher's code: one line saying where it broke
        raise UserError(_failed(name, entry, e)) from None
    return [module, *subs]


def _failed(name: str, entry: str, e: BaseException) -> str:
    frames = traceback.extract_tb(e.__traceback__)
    where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return f"plugin {name} ({PLUGINS_ENV} entry {entry!r}) failed to import: {type(e).__name__}: {e}{where}"


def plugin_modules() -> list:
    """The modules the plugins loaded (each entry's module and its submodules), in order."""
    return [m for group in load_plugins() for m in group]
