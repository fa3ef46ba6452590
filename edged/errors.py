"""The one exception hierarchy of edged.

Every error the package raises on purpose derives from :class:`EdgedError`, so the CLI can
turn any of them into a clear message and an exit code, and nothing else in the package
ever calls ``sys.exit``. Third-party exceptions are wrapped where they enter
(``raise ModelError(...) from exc``) so the cause stays in the traceback.
"""

from __future__ import annotations


class EdgedError(Exception):
    """Root of every error edged raises deliberately."""


class ConfigError(EdgedError):
    """The configuration file or an override is invalid; the message names key and file."""


class ModelError(EdgedError):
    """A model file is missing, corrupt, or does not match its catalogue spec."""


class ModelNotFoundError(ModelError):
    """A model file is not installed; the message names the file and the fix."""


class ModelMismatchError(ModelError):
    """A model loaded but its inputs/outputs differ from the spec (expected vs. actual)."""


class NoUsableModelError(ModelError):
    """Every model in a phase's fallback chain failed; nothing can run."""


class ProviderError(EdgedError):
    """No requested ONNX Runtime execution provider could create a session."""


class CaptureError(EdgedError):
    """A camera source could not be opened or stopped delivering frames."""


class FetchError(EdgedError):
    """Downloading or installing a model file failed (HTTP, checksum, disk)."""


class SpoolError(EdgedError):
    """The on-disk event spool could not be opened or written."""


class PublishError(EdgedError):
    """The MQTT client could not be configured (TLS files, credentials)."""
