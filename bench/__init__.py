"""gradcore's benchmark suite: ``python -m bench [--device cpu|cuda] [--suite NAME ...] [--quick]``."""
