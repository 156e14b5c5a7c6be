"""The builtin grids, one YAML file per grid (read by ease.grid; format: examples/grid.yaml).

Installed as the package ``ease.grids`` so that ``--grid NAME`` finds them after ``pip install .``
from any folder; this file only makes the folder a package.
"""
