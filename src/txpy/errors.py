"""Errors a user can cause. Each message says what to do next."""


class TxpyError(Exception):
    """Base class for every error caused by input or store state, not by a txpy bug."""


class NotAStoreError(TxpyError):
    """The path given is not a txpy store."""


class StoreVersionError(TxpyError):
    """The store was written by a newer txpy."""


class UnknownRefError(TxpyError):
    """A commit id, prefix or branch name that the store does not know."""


class BranchExistsError(TxpyError):
    """A new branch was asked for under a name the history already uses."""


class CorruptStoreError(TxpyError):
    """Bytes in the store do not match their hash or signature."""


class UntrustedError(TxpyError):
    """Commits signed by a key this store does not trust (cloned or pulled from elsewhere)."""


class RemoteError(TxpyError):
    """A remote is unknown, unreachable, or refuses an update that would lose commits."""


class StoreBusyError(TxpyError):
    """Another process holds the store's lock for an operation that needs it alone."""


class CommitFailedError(TxpyError):
    """A commit could not be written (e.g. the disk is full); HEAD stays at the last one."""


class RestoreError(TxpyError):
    """A committed value cannot be rebuilt here (e.g. a package it needs is missing)."""


class TxpyWarning(UserWarning):
    """Something was not stored or not restored exactly; the message says what."""
