"""The objects under one remote URL, each checked as it is read: a remote is written by
others, so nothing read from it is used before it is authenticated or refused in one line.

What is used comes from what is signed: a commit record's history and time are read from its
signed body (the outer copies are kept for older txpy and must agree with it), and a ref file
must be filed under the key of the (history, branch) it names, and is signed by the store
that pushed it over its history, branch, version and commit: pointing a branch elsewhere, or
copying an old ref file to a newer version, breaks the signature. (Refs written by a txpy
older than this carry no signature; they are read as before.)
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ..errors import CorruptStoreError, RemoteError, StoreVersionError, TxpyError
from ..repo import CommitRecord
from ..signing import Signer, verify
from ..store.backend import Backend, backend_for
from ..store.chunks import ChunkStore, chunk_key

#: the object at a remote's root that says "this is a txpy remote", and its format
MARKER = "txpy-remote"
FORMAT = 1
#: what a txpy remote holds at its root (older txpy wrote no marker)
LAYOUT = frozenset({"objects", "commits", "refs"})


def ref_key(history: str, branch: str) -> str:
    return chunk_key(json.dumps([history, branch]).encode())


@dataclass(frozen=True)
class RemoteRef:
    """A ref on a remote: the commit it names, its version (how many moves it had), and the
    key that signed it (None: written by an older txpy, unsigned)."""

    commit: str
    version: int
    signer: str | None = None


def ref_message(history: str, branch: str, version: int, commit_id: str) -> str:
    """What a ref's signature covers."""
    return json.dumps(["txpy-ref", history, branch, version, commit_id])


class Remote:
    """The objects of one remote URL; name is what this store calls it (for messages that
    say which command to run)."""

    def __init__(self, url: str, options: dict[str, Any] | None = None, name: str = "origin"):
        self.url = url.rstrip("/")
        self.name = name
        options = options or {}
        try:
            self.top = backend_for(self.url, fanout=False, create=False, **options)
            self.objects: Backend = backend_for(f"{self.url}/objects", create=False, **options)
            self.commits: Backend = backend_for(f"{self.url}/commits", create=False, **options)
            self.refs: Backend = backend_for(f"{self.url}/refs", create=False, **options)
        except (ImportError, ValueError) as e:
            raise RemoteError(f"cannot use remote {url}: {e}") from None
        self.chunks = ChunkStore(self.objects)

    # the marker
    def check_marker(self) -> None:
        """Refuse a URL that is not a txpy remote (clone, pull, fsck read only those)."""
        if self._marker_format() is None and not self._looks_like_older_remote():
            raise RemoteError(f"{self.url} is not a txpy remote ({self._what_is_there()}); "
                              "check the URL (a remote is made by the first push to it)")

    def claim(self) -> None:
        """Before a push writes anything: mark the URL as a txpy remote if it is empty (or
        an older txpy's); refuse a place that holds other things rather than mix in."""
        if self._marker_format() is not None:
            return
        names = set(self.top.keys())
        if names - LAYOUT:
            raise RemoteError(f"{self.url} is not a txpy remote ({self._what_is_there()}); "
                              "push to an empty directory or prefix instead")
        self.top.create(MARKER, json.dumps({"format": FORMAT}).encode())

    def _marker_format(self) -> int | None:
        try:
            body = self.top.get(MARKER)
        except FileNotFoundError:
            return None
        try:
            version = int(json.loads(body)["format"])
        except (ValueError, KeyError, TypeError):
            raise CorruptStoreError(f"{self.url}/{MARKER} is damaged; it should read "
                                    f'{{"format": {FORMAT}}}') from None
        if version > FORMAT:
            raise StoreVersionError(f"{self.url} is a txpy remote of format {version}, "
                                    "written by a newer txpy; upgrade txpy")
        return version

    def _looks_like_older_remote(self) -> bool:
        names = set(self.top.keys())
        return bool(names) and names <= LAYOUT

    def _what_is_there(self) -> str:
        names = sorted(self.top.keys())
        if not names:
            return "nothing is there: no such directory or bucket, or it is empty"
        shown = ", ".join(names[:4]) + (", …" if len(names) > 4 else "")
        return f"no {MARKER} marker; it holds {shown}"

    # refs
    def read_refs(self) -> dict[tuple[str, str], RemoteRef]:
        """The newest version of every ref, each filed under the key of what it names."""
        newest: dict[str, tuple[int, str]] = {}
        for key in self.refs.keys():
            ref, _, version = key.rpartition(".")
            if version.isdigit() and int(version) > newest.get(ref, (-1, ""))[0]:
                newest[ref] = (int(version), key)
        out = {}
        for ref, (version, key) in newest.items():
            history, branch, commit, signer, sig = self._read_ref(key)
            if ref_key(history, branch) != ref:
                raise CorruptStoreError(
                    f"ref {key[:12]}… on {self.url} claims branch {branch!r} of history "
                    f"{history!r}, which is filed under another key: tampered with; refused")
            if (signer is not None or sig is not None) and not (
                    isinstance(signer, str) and isinstance(sig, str)
                    and verify(signer, sig, ref_message(history, branch, version, commit))):
                raise CorruptStoreError(
                    f"branch {branch!r} of history {history!r} on {self.url} does not match "
                    "its signature: tampered with; refused")
            out[(history, branch)] = RemoteRef(commit, version, signer)
        return out

    def _read_ref(self, key: str) -> tuple[str, str, str, Any, Any]:
        """(history, branch, commit, signer, signature) of a ref file, as written there."""
        try:
            rec = json.loads(self.refs.get(key))
            return (str(rec["history"]), str(rec["branch"]), str(rec["commit"]),
                    rec.get("signer"), rec.get("sig"))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise CorruptStoreError(f"ref {key[:12]}… on {self.url} is damaged (not a ref "
                                    "record); `txpy fsck --remote` checks the rest") from None

    def write_ref(self, history: str, branch: str, commit_id: str, after: RemoteRef | None,
                  signer: Signer) -> None:
        """Move a ref from the version `after` (None: it does not exist yet) to commit_id,
        signed by signer."""
        version = after.version + 1 if after else 0
        body = json.dumps({"history": history, "branch": branch, "commit": commit_id,
                           "signer": signer.key_id,
                           "sig": signer.sign(ref_message(history, branch, version, commit_id))})
        if not self.refs.create(f"{ref_key(history, branch)}.{version:012d}", body.encode()):
            raise RemoteError(
                f"someone pushed to branch {branch!r} of {history!r} meanwhile; run "
                f"`txpy pull` first, then push again, or keep both: publish yours as a new "
                f"branch with `txpy push {self.name} {branch}:NEW-NAME`")

    # commit records
    def read_commit(self, commit_id: str) -> CommitRecord:
        """The record of a commit as pushed: its body hashes to its id, history and time come
        from that body (the signature is checked by who uses it: `check_commit_record`)."""
        try:
            raw = self.commits.get(commit_id)
        except FileNotFoundError:
            raise RemoteError(f"the remote lacks commit record {commit_id[:12]} that a ref or "
                              "parent names; it is incomplete (an interrupted push?)") from None
        return parse_record(commit_id, raw, self.url)

    def write_commit(self, r: CommitRecord) -> int:
        """Store a commit record (after the chunks it needs); the bytes written."""
        return self.commits.put_many([(r.id, record_bytes(r))])

    def body(self, key: str) -> bytes:
        """A chunk's stored bytes as they are (check them with ``chunks.decode``)."""
        try:
            return self.objects.get(key)
        except FileNotFoundError:
            raise CorruptStoreError(f"chunk {key[:12]} is missing from {self.url}; "
                                    f"`txpy push --verify` re-sends what the remote lacks"
                                    ) from None


def record_bytes(r: CommitRecord) -> bytes:
    """A commit record as a remote holds it; history and time repeat the signed body's."""
    return json.dumps({"history": r.history, "time": r.time, "body": r.body.decode(),
                       "sig": r.sig, "signer": r.signer}).encode()


def parse_record(commit_id: str, raw: bytes, where: str) -> CommitRecord:
    """A record read from a remote, refused in one line if damaged or if its unsigned outer
    fields disagree with its body."""
    damaged = CorruptStoreError(f"commit record {commit_id[:12]} on {where} is damaged "
                                "(truncated or not a txpy record); `txpy fsck --remote`")
    try:
        rec = json.loads(raw)
        body = rec["body"].encode()
        sig, signer = str(rec["sig"]), str(rec["signer"])
        signed = json.loads(body)
        history, time = str(signed["history"]), float(signed["time"])
    except (ValueError, KeyError, TypeError, AttributeError):
        raise damaged from None
    if chunk_key(body) != commit_id:
        raise CorruptStoreError(f"commit {commit_id[:12]} on {where}: record does not match "
                                "its id (tampered with or damaged)")
    if rec.get("history", history) != history or rec.get("time", time) != time:
        raise CorruptStoreError(f"commit {commit_id[:12]} on {where}: its record's history "
                                "or time disagrees with its signed body: tampered with; refused")
    return CommitRecord(commit_id, history, time, body, sig, signer)


@contextmanager
def reaching(url: str) -> Iterator[None]:
    """Failures to reach or read a remote become one RemoteError that says what to do."""
    try:
        yield
    except TxpyError:
        raise
    except NotADirectoryError:
        raise RemoteError(f"{url} is a file, not a directory; a remote is a directory or a "
                          "bucket prefix") from None
    except FileNotFoundError as e:
        raise RemoteError(f"{url}: not found ({e}); does the bucket or directory exist? "
                          "create it first") from None
    except PermissionError as e:
        raise RemoteError(f"no permission for {url} ({e}); check your credentials") from None
    except OSError as e:
        raise RemoteError(f"cannot use {url}: {e}") from None
    except Exception as e:
        message = _botocore_message(e)
        if message is None:
            raise
        raise RemoteError(f"cannot reach {url}: {message}") from None


def _botocore_message(e: Exception) -> str | None:
    """What to do about a botocore failure (S3 and compatible servers); None if e is not
    one. botocore is imported only by s3fs, so it is looked up, never imported here."""
    exceptions = getattr(sys.modules.get("botocore"), "exceptions", None)
    if exceptions is None:
        return None
    if isinstance(e, exceptions.NoCredentialsError):
        return ("no credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "or an AWS profile (botocore's usual configuration)")
    if isinstance(e, exceptions.EndpointConnectionError):
        return f"{e}; is the server running? check --endpoint-url"
    if isinstance(e, exceptions.BotoCoreError | exceptions.ClientError):
        return str(e)
    return None
