"""The weights folder (safetensors and config.json, checked by sha256 and fingerprint) and where it comes from:
the Hub, the HF cache or the bundled copy.
"""
