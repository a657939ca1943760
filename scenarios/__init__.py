"""Stream builders: each module registers a builder in ``ctta.registry.SCENARIOS`` returning an Avalanche
benchmark. Installed as ``ctta.scenarios`` (the repository folder ``scenarios/``).

Exports every scenario builder and its config, and the names each module lists in ``__all__``, lazily
(PEP 562), as Avalanche exports its own: ``from ctta.scenarios import build_si_blurry, SiBlurryConfig`` imports
only the module that defines them, so optional dependencies load only with the component that needs them.
The names come from ``ctta.registry_index`` (the registrations read from the source): a new component is
exported without a list to update.
"""

from ctta.registry_index import lazy_exports

if __name__ != "ctta.scenarios":  # the repository folder imported as a top-level package
    raise ImportError(
        f"{__name__!r} is the repository folder, not ctta's package: import ctta.scenarios "
        "(e.g. `from ctta.scenarios import build_si_blurry`); a second copy under another name would register every "
        "component twice"
    )


__getattr__, __dir__ = lazy_exports("scenario", globals())
