"""Typed payloads edged publishes and serves: one dataclass per contract, one to_json()."""
