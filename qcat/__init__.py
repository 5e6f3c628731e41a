"""qcat's shared runtime: the model engine, settings and logging that the worker and the training CLI both use."""

__version__ = "0.1.0"
