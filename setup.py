"""Package list for setuptools (metadata lives in pyproject.toml).

One namespace: the repository folders ``scenarios/`` and ``strategies/`` install as ``ctta.scenarios`` and
``ctta.strategies`` (with every sub-package, so adding a method folder needs no edit here); nothing else lands at
the top level of site-packages. Editable installs map the folders the same way.
"""

from setuptools import find_packages, setup

MAPPED = {"ctta.scenarios": "scenarios", "ctta.strategies": "strategies"}
packages = find_packages(include=["ctta", "ctta.*"])
for name, folder in MAPPED.items():
    packages += [name] + [f"{name}.{sub}" for sub in find_packages(where=folder)]

setup(packages=packages, package_dir=MAPPED)
