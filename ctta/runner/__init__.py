"""The runner: ``ctta run|demo|generate|list``, the run loop, config files, results files and checkpoint files.

The library (``ctta`` outside this package, ``ctta.strategies``, ``ctta.scenarios``) never imports it: scripts use
strategies and scenarios directly; the runner reads YAML configs into the config dataclasses those take.
"""
