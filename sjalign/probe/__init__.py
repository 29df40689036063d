"""Linear probes and their zero-gradient transfer through alignment maps."""

from sjalign.probe.transfer import LinearHead, compose_head, train_probe, transfer_probe

__all__ = ["LinearHead", "compose_head", "train_probe", "transfer_probe"]
