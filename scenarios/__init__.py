"""Stream builders: each module registers a builder in ``ctta.registry.SCENARIOS`` returning an Avalanche benchmark."""
