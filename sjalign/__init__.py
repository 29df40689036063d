"""sjalign: plug any encoders into latent-space alignment (Social-JEPA toolkit)."""

__version__ = "0.1.0"
