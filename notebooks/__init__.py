"""The pipeline's notebooks (jupytext sources) and the plot they share.

Installed as the package ``ease.notebooks`` so that ``python -m ease.pipeline`` finds the training
notebook after ``pip install .`` from any folder; this file only makes the folder a package.
"""
