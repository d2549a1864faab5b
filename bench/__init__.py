"""gradcore's benchmark suite.

Run ``python -m bench [--device cpu|cuda] [--suite NAME ...] [--quick]``.
"""
