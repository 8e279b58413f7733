"""The device: wake-word detection, local labels, and private learning through `sda`."""

__version__ = "0.1.0"
