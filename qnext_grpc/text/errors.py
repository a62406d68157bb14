"""`TextError`: a client's text input (chat messages, stop strings, tags) is malformed.

The gRPC layer maps it to INVALID_ARGUMENT; nothing here imports grpc or torch.
"""

from __future__ import annotations


class TextError(ValueError):
    """Malformed client text input; the message says what is wrong and where."""
