"""Avalanche strategies, one package (or file) per method; each registers in ``ctta.registry.STRATEGIES``.

Installed as ``ctta.strategies`` (the repository folder ``strategies/``).

Exports every strategy class and its config, and the names each module lists in ``__all__``, lazily
(PEP 562), as Avalanche exports its own: ``from ctta.strategies import MVP, MVPConfig`` imports only the module that
defines them, so optional dependencies (DiffTPT's diffusers) load only with the component that needs them.
The names come from ``ctta.registry_index`` (the registrations read from the source): a new component is
exported without a list to update.
"""

if __name__ != "ctta.strategies":  # the repository folder imported as a top-level package
    raise ImportError(
        f"{__name__!r} is the repository folder, not ctta's package: import ctta.strategies "
        "(e.g. `from ctta.strategies import MVP`); a second copy under another name would register every "
        "component twice"
    )


def __getattr__(name: str):
    """Import ``name`` from the module that defines it (``ctta.strategies.<module>``) on first use."""
    import importlib

    from ctta.registry_index import public_names

    if name == "__all__":  # ``from ctta.strategies import *``
        return sorted(public_names("strategy"))
    module = public_names("strategy").get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups are plain attribute reads
    return value


def __dir__() -> list[str]:
    from ctta.registry_index import public_names

    return sorted(set(globals()) | set(public_names("strategy")))
