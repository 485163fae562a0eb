"""Domain exceptions with stable codes; the CLI and the API map them to exits and 4xx responses."""

from __future__ import annotations


class RagError(Exception):
    """Base error: `code` is stable and machine-readable, the message is one human sentence."""

    code = "rag_error"
    http_status = 400

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0])


class InvalidInputError(RagError):
    code = "invalid_input"
    http_status = 422


class NotFoundError(RagError):
    code = "not_found"
    http_status = 404


class ConflictError(RagError):
    """The request or settings clash with what is already stored."""

    code = "conflict"
    http_status = 409


class KeyFileError(RagError):
    code = "key_error"


class TrustStoreError(RagError):
    """A trust file that cannot be relied on (a key id that is not its key's hash, a key listed twice, a bad time)."""

    code = "trust_store_invalid"
    http_status = 500


class LedgerError(RagError):
    code = "ledger_corrupt"
    http_status = 500


class BackendUnavailableError(RagError):
    """A model or store backend could not be loaded or reached."""

    code = "backend_unavailable"
    http_status = 503
