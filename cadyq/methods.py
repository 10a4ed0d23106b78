"""The quantization methods and their default bit candidates (plain data: the CLI reads it without torch)."""

METHODS = ("fp32", "pams8", "cadyq", "gdq")
DEFAULT_BITS = {"cadyq": (4, 6, 8), "gdq": (4, 5, 6, 8)}
