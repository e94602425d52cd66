"""compressor: turn a big image classifier into a small, fast one.

The library works without the CLI::

    from compressor import data, models, training
    from compressor.stages import teach, select, distill, prune, export
"""

__version__ = "0.1.0"


class CompressorError(Exception):
    """An error the user can cause and fix: printed as one line, never as a traceback."""
