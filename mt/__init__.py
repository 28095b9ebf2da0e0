"""mt: neural machine translation toolkit (RNN and Transformer encoder-decoders)."""

__version__ = "0.1.0"


class MTError(Exception):
    """An error caused by the user's input (files, options, checkpoints).

    The CLI prints its message as one line on stderr and exits non-zero, without a traceback.
    """
