"""Replicability: push / pull / clone histories between a store and a remote.

A remote is plain objects under one URL (any fsspec URL; S3-compatible object storage is the
target), no database file::

    txpy-remote             the marker: {"format": 1}, written by the first push
    objects/ab/cdef…        chunks, exactly as in a local store (verified by hash on arrival)
    commits/ab/cdef…        commit records: JSON {history, time, body, sig, signer}
    refs/ab/cdef….N         version N of a (history, branch): JSON {history, branch, commit}

objects.py reads and writes them (checking each), transfer.py pushes and pulls, check.py
finds and heals damage, clone.py clones, config.py names remotes.
"""

from .check import Repair, fsck_remote
from .clone import clone
from .config import add_remote, get_remote
from .objects import Remote, RemoteRef
from .transfer import Divergence, TransferStats, pull, push

__all__ = ["Divergence", "Remote", "RemoteRef", "Repair", "TransferStats", "add_remote",
           "clone", "fsck_remote", "get_remote", "pull", "push"]
