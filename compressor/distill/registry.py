"""The method registry: one entry per distillation method, filled by `@register_method` on its class.

The CLI choices (`--method`), the recipe validation, the method table in docs/concepts/methods.md and the check of
which options a method reads all come from this one dict (as timm's `@register_model` and
torchdistill's loss registry do).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from compressor import CompressorError
from compressor.tables import Table

SCHEME_NAMES = ("offline", "online", "self", "born-again", "assistant")
# What each option is when not given (compressor.config.DistillOptions takes its defaults from here);
# a weight left None is the chosen method's own default (MethodInfo.defaults).
OPTION_DEFAULTS = {"temperature": None, "alpha": None, "beta": None, "gamma": None, "balance": True, "layers": None,
                   "pairs": "matched", "lambdas": None, "hint_epochs": 1, "lit_epochs": 1}
METHOD_OPTIONS = tuple(OPTION_DEFAULTS)  # options a method may read besides the training ones
PHASE_OPTIONS = ("hint_epochs", "lit_epochs")  # epochs a method trains before its main phase
WEIGHTS = ("temperature", "alpha", "beta", "gamma")


@dataclass(frozen=True)
class MethodInfo:
    name: str
    cls: type
    summary: str  # what the student learns (the method table's second column, docs/concepts/methods.md)
    uses: tuple[str, ...]  # which of METHOD_OPTIONS it reads
    defaults: dict = field(default_factory=dict)  # its own defaults for temperature, alpha, beta

    @property
    def feature(self) -> bool:
        return "layers" in self.uses


METHODS: dict[str, MethodInfo] = {}


def register_method(name: str, *, summary: str, uses: tuple[str, ...], defaults: dict | None = None):
    """Class decorator: register a Distiller under `name` with the options it reads and their defaults."""
    unknown = [u for u in uses if u not in METHOD_OPTIONS]
    missing = [w for w in WEIGHTS if w in uses and w not in (defaults or {})]
    if unknown or missing:
        raise ValueError(f"method {name}: unknown options {unknown} or weights without a default {missing}")

    def decorate(cls):
        METHODS[name] = MethodInfo(name, cls, summary, tuple(uses), dict(defaults or {}))
        cls.method_name = name
        return cls

    return decorate


def get_method(name: str) -> MethodInfo:
    if name not in METHODS:
        raise CompressorError(f"unknown method '{name}'; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def resolve_options(name: str, given: dict, explicit: set[str]) -> dict:
    """The options `name` reads, its defaults filled in for those left None.

    `explicit`: the options the user set. One the method does not read is an error, never silently
    dropped.
    """
    info = get_method(name)
    unused = [k for k in METHOD_OPTIONS if k in explicit and k not in info.uses and given.get(k) is not None]
    if unused:
        flags = ", ".join("--" + k.replace("_", "-") for k in unused)
        reads = ", ".join("--" + k.replace("_", "-") for k in info.uses) or "none of them"
        raise CompressorError(f"--method {name} does not use {flags} (it reads {reads})")
    out = {k: given.get(k) for k in info.uses}
    for k, v in info.defaults.items():
        if out.get(k) is None:
            out[k] = v
    return out


def extra_epochs(options: dict) -> int:
    """Epochs the method's phases add before its main one (fitnet's hints, lit's block-wise phase)."""
    return sum(options.get(k) or 0 for k in PHASE_OPTIONS)


def defaults_of(option: str) -> str:
    """Each method's default for `option`, for its --help: 'kd 4, fitnet 4, dist 1' (registry order)."""
    return ", ".join(f"{info.name} {info.defaults[option]:g}" for info in METHODS.values() if option in info.defaults)


def method_table() -> list[tuple[str, str, str]]:
    """(method, what the student learns, options with defaults) per registered method."""
    rows = []
    for info in METHODS.values():
        opts = [f"`--{k.replace('_', '-')}`" + (f" ({info.defaults[k]:g})" if k in info.defaults else "")
                for k in info.uses]
        rows.append((f"`{info.name}`", info.summary, ", ".join(opts)))
    return rows


def method_table_markdown() -> str:

    return Table(["`--method`", "what the student learns", "options (default)"], method_table(), left=3).markdown()


if __name__ == "__main__":  # the docs' method table: python -m compressor.distill.registry
    from compressor.distill import registry  # the package registers every method there

    print(registry.method_table_markdown(), end="")
