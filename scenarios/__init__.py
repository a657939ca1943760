"""Stream builders: each module registers a builder in ``ctta.registry.SCENARIOS`` returning an Avalanche
benchmark. Installed as ``ctta.scenarios`` (the repository folder ``scenarios/``)."""

if __name__ != "ctta.scenarios":  # the repository folder imported as a top-level package
    raise ImportError(
        f"{__name__!r} is the repository folder, not ctta's package: import ctta.scenarios "
        "(e.g. `from ctta.scenarios.si_blurry import ...`); a second copy under another name would register every "
        "component twice"
    )
