"""Avalanche strategies, one package (or file) per method; each registers in ``ctta.registry.STRATEGIES``.

Installed as ``ctta.strategies`` (the repository folder ``strategies/``)."""

if __name__ != "ctta.strategies":  # the repository folder imported as a top-level package
    raise ImportError(
        f"{__name__!r} is the repository folder, not ctta's package: import ctta.strategies "
        "(e.g. `from ctta.strategies.mvp import ...`); a second copy under another name would register every "
        "component twice"
    )
