"""Data: read files or in-memory rows, check them against their format, tokenize."""

from .loading import LoadedDataset, load_dataset_config
from .tokenize import ListDataset, encode_dataset

__all__ = ["ListDataset", "LoadedDataset", "encode_dataset", "load_dataset_config"]
