"""Commit signatures: each store has an Ed25519 key; every commit id is signed with it.

Asymmetric, so a store that receives commits (pull, clone) can verify them against public
keys it trusts without holding anyone's secret. Nothing is unpickled from a commit whose
signature does not verify against a trusted key.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


class Signer:
    """The store's private key. ``key_id`` (hex public key) is what others trust."""

    def __init__(self, private: Ed25519PrivateKey):
        self._private = private
        self.key_id = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()

    @classmethod
    def create(cls, path: Path) -> Signer:
        private = Ed25519PrivateKey.generate()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(private.private_bytes_raw())
            f.flush()
            os.fsync(f.fileno())
        return cls(private)

    @classmethod
    def load(cls, path: Path) -> Signer:
        return cls(Ed25519PrivateKey.from_private_bytes(path.read_bytes()))

    def sign(self, commit_id: str) -> str:
        return self._private.sign(commit_id.encode()).hex()


def verify(key_id: str, signature: str, commit_id: str) -> bool:
    """Whether signature is key_id's signature of commit_id."""
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(key_id)).verify(
            bytes.fromhex(signature), commit_id.encode())
    except (InvalidSignature, ValueError):
        return False
    return True
