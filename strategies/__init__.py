"""Avalanche strategies, one package (or file) per method; each registers in ``ctta.registry.STRATEGIES``.

Installed as ``ctta.strategies`` (the repository folder ``strategies/``).

Exports every strategy class and its config, and the names each module lists in ``__all__``, lazily
(PEP 562), as Avalanche exports its own: ``from ctta.strategies import MVP, MVPConfig`` imports only the module that
defines them, so optional dependencies (DiffTPT's diffusers) load only with the component that needs them.
The names come from ``ctta.registry_index`` (the registrations read from the source): a new component is
exported without a list to update.
"""

from ctta.registry_index import lazy_exports

if __name__ != "ctta.strategies":  # the repository folder imported as a top-level package
    raise ImportError(
        f"{__name__!r} is the repository folder, not ctta's package: import ctta.strategies "
        "(e.g. `from ctta.strategies import MVP`); a second copy under another name would register every "
        "component twice"
    )


__getattr__, __dir__ = lazy_exports("strategy", globals())
