"""CBIR workbench engine: collections, deep features, distances, search, fusion, evaluation.

Importing this package does not import Keras or TensorFlow; extractors do when built.
"""

__version__ = "0.1.0"
