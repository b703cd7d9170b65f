"""stagewise: staged fine-tuning that learns a new task without forgetting the old ones."""
__version__ = "0.1.0"
