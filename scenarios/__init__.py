"""Stream builders: each module registers a builder in ``ctta.registry.SCENARIOS`` returning an Avalanche
benchmark. Installed as ``ctta.scenarios`` (the repository folder ``scenarios/``).

Exports every scenario builder and its config, and the names each module lists in ``__all__``, lazily
(PEP 562), as Avalanche exports its own: ``from ctta.scenarios import build_si_blurry, SiBlurryConfig`` imports
only the module that defines them, so optional dependencies load only with the component that needs them.
The names come from ``ctta.registry_index`` (the registrations read from the source): a new component is
exported without a list to update.
"""

if __name__ != "ctta.scenarios":  # the repository folder imported as a top-level package
    raise ImportError(
        f"{__name__!r} is the repository folder, not ctta's package: import ctta.scenarios "
        "(e.g. `from ctta.scenarios import build_si_blurry`); a second copy under another name would register every "
        "component twice"
    )


def __getattr__(name: str):
    """Import ``name`` from the module that defines it (``ctta.scenarios.<module>``) on first use."""
    import importlib

    from ctta.registry_index import public_names

    if name == "__all__":  # ``from ctta.scenarios import *``
        return sorted(public_names("scenario"))
    module = public_names("scenario").get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups are plain attribute reads
    return value


def __dir__() -> list[str]:
    from ctta.registry_index import public_names

    return sorted(set(globals()) | set(public_names("scenario")))
