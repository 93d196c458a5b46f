"""Tools on the public API: the built-in simulator, the benchmark and the demo."""
