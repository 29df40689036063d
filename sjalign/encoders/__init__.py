"""Encoders: the protocol, the entry-point registry and the built-ins (pixels, jepa)."""

from sjalign.encoders.base import Encoder, EncoderOptions, available_encoders, create_encoder

__all__ = ["Encoder", "EncoderOptions", "available_encoders", "create_encoder"]
