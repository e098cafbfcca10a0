"""prefdata: build preference datasets, keep them versioned, train on them."""
__version__ = "0.1.0"
