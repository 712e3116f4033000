"""mmdata: vision-language training data, done right.

clean -> shard -> loader -> train. Each stage is a library first; the CLI is a thin layer.
"""

__version__ = "0.1.0"
