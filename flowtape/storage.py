"""Tapes in S3 or S3-compatible object storage: upload as parts finish, pull, open, merge.

A tape in a bucket has the same layout as on disk, under a prefix:

    s3://BUCKET/PREFIX/NAME.tape/manifest.json
    s3://BUCKET/PREFIX/NAME.tape/<table>/node=<node>/part-<seq>.parquet

Rules that keep a tape in a bucket readable at every instant:
- parts are immutable: uploaded once, after the writer renamed them into place; a key that
  already holds other bytes is never overwritten (an error names it);
- the manifest is uploaded last and lists only parts already in the bucket, so a reader sees
  the previous manifest or the new one, and every part either lists is there (one PUT is atomic);
- a single PUT per object (no multipart), so a connection cut mid-upload leaves no object and
  no half-written one; the next sync uploads it again;
- what was uploaded is remembered in a state file in the cache folder (not in the tape, which
  may be read-only or committed), and checked against the bucket when that file is missing, so a
  sync after a network loss or a restart goes on where it stopped.

Credentials come from the standard AWS chain (environment, ~/.aws files, instance or pod
roles: boto3's own); an S3-compatible store (MinIO, Ceph, moto) through `AWS_ENDPOINT_URL` or
`AWS_ENDPOINT_URL_S3`, which botocore reads itself.

Reading: DuckDB's httpfs extension is downloaded from the extension repository at first use,
which these hosts cannot reach, and the analysis half reads local Parquet files; so a remote
tape is read by fetching its parts once into a local cache (parts are immutable, so a cached
part never goes stale; a later open fetches only the parts added since) and opening that.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from .errors import FlowtapeError, PermissionDenied, TapeError, Unreachable, UsageError
from .manifest import MANIFEST_NAME, read_manifest, write_atomic
from .schema import FORMAT, TABLES
from .writer import sha256_file

SCHEME = "s3://"
CACHE_ENV = "FLOWTAPE_CACHE_DIR"
STATE_TABLES = {name for name, t in TABLES.items() if t.key}  # k8s_*: needed whatever the time range


# --- locations -------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Location:
    """A bucket and a key prefix (no leading slash; '' or ending in '/')."""

    bucket: str
    prefix: str

    @property
    def url(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}"

    def key(self, rel: str) -> str:
        return self.prefix + rel

    def child(self, name: str) -> "S3Location":
        return S3Location(self.bucket, self.prefix + name.strip("/") + "/")

    @property
    def is_tape(self) -> bool:
        """A URL naming a tape itself (NAME.tape/) rather than a prefix holding tapes."""
        return self.prefix.rstrip("/").endswith(".tape")

    def tape_for(self, local: Path) -> "S3Location":
        """Where a local tape goes: the URL itself if it names a tape, else PREFIX/<local name>/."""
        return self if self.is_tape else self.child(local.name)

    def __str__(self) -> str:
        return self.url


def remote_url(path: str | os.PathLike) -> str | None:
    """The s3:// URL in `path`, or None for a local path.

    A URL passed through pathlib has lost one slash (`s3:/bucket/x`): it is still a URL, since
    no local tape is called `s3:`.
    """
    s = os.fspath(path)
    if s.startswith(SCHEME):
        return s
    if s.startswith("s3:/"):
        return SCHEME + s[len("s3:/"):]
    return None


def parse_url(url: str) -> S3Location:
    """Parse `s3://bucket/prefix/` (UsageError with one line when it is not one)."""
    u = remote_url(url)
    if u is None:
        raise UsageError(f"{url}: not an s3:// URL (expected s3://BUCKET/PREFIX/)")
    rest = u[len(SCHEME):]
    bucket, _, prefix = rest.partition("/")
    if not bucket or any(c in bucket for c in " \\?#"):
        raise UsageError(f"{url}: no bucket name (expected s3://BUCKET/PREFIX/)")
    prefix = prefix.lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    if any(p in ("..", ".") for p in PurePosixPath(prefix).parts):
        raise UsageError(f"{url}: '.' and '..' are not allowed in a prefix")
    return S3Location(bucket, prefix)


# --- the client and its errors ---------------------------------------------------------------

_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "InvalidClientTokenId", "UnrecognizedClientException"}
_EXPIRED_CODES = {"ExpiredToken", "ExpiredTokenException", "TokenRefreshRequired", "RequestExpired"}


def client(connect_timeout: float = 5.0, read_timeout: float = 60.0, attempts: int = 3) -> Any:
    """An S3 client from the standard credential chain and endpoint settings.

    Short connect timeouts and few attempts: the callers retry on their own schedule (the
    recorder keeps recording while the store is away), so botocore must not hang for minutes.
    """
    try:
        import boto3
        from botocore.config import Config
    except ImportError:  # pragma: no cover - a dependency of flowtape
        raise FlowtapeError("boto3 is not installed (pip install boto3): needed for s3:// tapes") from None
    cfg = Config(connect_timeout=connect_timeout, read_timeout=read_timeout, retries={"max_attempts": attempts, "mode": "standard"},
                 signature_version="s3v4")
    try:
        return boto3.session.Session().client("s3", config=cfg)
    except Exception as e:  # a malformed AWS_ENDPOINT_URL, an unknown profile...
        raise UsageError(f"cannot set up the S3 client: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0][:240] if s else type(e).__name__


def s3_error(e: BaseException, where: str) -> FlowtapeError:
    """One line for a botocore failure, with the exit code it deserves.

    Missing bucket or key: bad input (3); rejected or expired credentials, access denied: no
    permission (6); no answer at all: unreachable (10), which callers may retry.
    """
    from botocore import exceptions as bx

    if isinstance(e, FlowtapeError):
        return e
    if isinstance(e, bx.NoCredentialsError):
        return PermissionDenied(f"{where}: no AWS credentials found (environment, ~/.aws/credentials, instance or pod role)")
    if isinstance(e, bx.PartialCredentialsError):
        return PermissionDenied(f"{where}: incomplete AWS credentials ({_first_line(e)})")
    if isinstance(e, (bx.EndpointConnectionError, bx.ConnectionClosedError, bx.ConnectTimeoutError, bx.ReadTimeoutError,
                      bx.HTTPClientError)):
        return Unreachable(f"{where}: object storage unreachable ({_first_line(e)})")
    if isinstance(e, bx.ClientError):
        err = e.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":
            name = err.get("BucketName") or where
            return TapeError(f"s3://{name}: no such bucket (create it first, or check the name and region)")
        if code in _EXPIRED_CODES:
            return PermissionDenied(f"{where}: AWS credentials expired ({code}); renew them (aws sso login, a new session token)")
        if code in _CREDENTIAL_CODES:
            return PermissionDenied(f"{where}: AWS credentials rejected ({code}); check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the profile")
        if code in ("AccessDenied", "403", "AllAccessDisabled") or status == 403:
            return PermissionDenied(f"{where}: access denied by the bucket policy or the credentials' role ({code or status})")
        if status is not None and status >= 500:
            return Unreachable(f"{where}: object storage failed ({code or status}: {err.get('Message', '')})")
        return TapeError(f"{where}: {code or status}: {err.get('Message') or _first_line(e)}")
    if isinstance(e, bx.BotoCoreError):
        return Unreachable(f"{where}: {_first_line(e)}")
    if isinstance(e, RuntimeError) and "expired" in str(e):
        # botocore's refreshable credentials (credential_process, SSO, a pod's web identity) whose
        # source handed out expired ones again
        return PermissionDenied(f"{where}: AWS credentials expired and their source gave no fresh ones; renew them (aws sso login, a new token)")
    if isinstance(e, OSError):
        return TapeError(f"{where}: {e.strerror or e}")
    raise e


def _code(e: BaseException) -> str | None:
    from botocore.exceptions import ClientError

    return str(e.response.get("Error", {}).get("Code")) if isinstance(e, ClientError) else None


def _missing(e: Exception) -> bool:
    return _code(e) in ("404", "NoSuchKey", "NotFound")


def check_bucket(s3: Any, loc: S3Location) -> None:
    """Fail now, in one line, when the bucket is missing or the credentials cannot use it."""
    try:
        s3.head_bucket(Bucket=loc.bucket)
    except Exception as e:
        if _missing(e):
            raise TapeError(f"s3://{loc.bucket}: no such bucket (create it first, or check the name and region)") from None
        if _code(e) == "403":
            # a HEAD answer has no body, so no reason: ask again with a request whose error says
            # which (unknown key, bad signature, expired token, or a policy denying it)
            try:
                s3.list_objects_v2(Bucket=loc.bucket, Prefix=loc.prefix, MaxKeys=1)
            except Exception as e2:
                raise s3_error(e2, f"s3://{loc.bucket}") from None
        raise s3_error(e, f"s3://{loc.bucket}") from None


def sha256_b64(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


def _recount(manifest: dict[str, Any]) -> None:
    tables: dict[str, dict[str, int]] = {}
    for entry in manifest["files"].values():
        t = tables.setdefault(entry["table"], {"rows": 0, "parts": 0})
        t["rows"] += entry["rows"]
        t["parts"] += 1
    manifest["tables"] = dict(sorted(tables.items()))


# --- upload ----------------------------------------------------------------------------------


@dataclass
class SyncResult:
    uploaded: list[str] = field(default_factory=list)  # parts PUT by this sync
    already: list[str] = field(default_factory=list)  # parts found in the bucket with the same sha256
    bytes: int = 0
    seconds: float = 0.0
    manifest: bool = False  # the manifest was (re)uploaded
    pending: int = 0  # parts listed locally and not yet in the bucket (0 after a complete sync)


class Uploader:
    """Upload one local tape's finished parts, then its manifest, to a bucket.

    `sync()` is idempotent and safe to call at any time, from one thread at a time: it uploads
    what the local manifest lists and the bucket lacks, then a manifest listing exactly what the
    bucket has.
    """

    def __init__(self, tape: str | os.PathLike, dest: str | S3Location, s3: Any = None):
        self.tape = Path(tape)
        loc = dest if isinstance(dest, S3Location) else parse_url(dest)
        self.dest = loc.tape_for(self.tape)
        self.s3 = s3 if s3 is not None else client()
        self._lock = threading.Lock()
        self.state_path = state_path(self.tape, self.dest)
        self.state = self._load_state()

    # the state file: which parts (and which manifest) this tape has put at this destination
    def _load_state(self) -> dict[str, Any]:
        try:
            st = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            st = {}
        if not isinstance(st, dict) or st.get("dest") != self.dest.url or st.get("tape") != str(self.tape.resolve()):
            st = {"tape": str(self.tape.resolve()), "dest": self.dest.url, "parts": {}, "manifest_etag": None}
        return st

    def _save_state(self) -> None:
        try:
            self.state_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_atomic(self.state_path, (json.dumps(self.state, indent=1, sort_keys=True) + "\n").encode())
        except OSError:
            pass  # only a shortcut: without it the next sync asks the bucket (HEAD) what is there already

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            return self.s3.head_object(Bucket=self.dest.bucket, Key=key)
        except Exception as e:
            if _missing(e):
                return None
            raise

    def _put_part(self, rel: str, entry: dict[str, Any], result: SyncResult) -> None:
        key = self.dest.key(rel)
        where = f"{self.dest.url}{rel}"
        head = self._head(key)
        if head is not None:
            theirs = (head.get("Metadata") or {}).get("sha256")
            if theirs == entry["sha256"] and head.get("ContentLength") == entry["bytes"]:
                result.already.append(rel)  # uploaded before (by a sync that died before noting it): same bytes
                return
            raise TapeError(f"{where}: already in the bucket with other content (sha256 {str(theirs)[:12]}…, "
                            f"this part {entry['sha256'][:12]}…); parts are immutable, nothing was overwritten: upload to another prefix")
        path = self.tape / rel
        try:
            with open(path, "rb") as body:
                # ChecksumSHA256: the store checks the bytes it got against the manifest's digest;
                # IfNoneMatch: two uploaders racing for one key cannot overwrite each other's part
                self.s3.put_object(Bucket=self.dest.bucket, Key=key, Body=body, ContentLength=entry["bytes"],
                                   ChecksumSHA256=sha256_b64(entry["sha256"]), Metadata={"sha256": entry["sha256"]},
                                   ContentType="application/vnd.apache.parquet", IfNoneMatch="*")
        except FileNotFoundError:
            raise TapeError(f"{path}: listed in the manifest but gone from disk; cannot upload it") from None
        except Exception as e:
            if _code(e) in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return self._put_part(rel, entry, result)  # written by someone else meanwhile: compare it
            raise
        result.uploaded.append(rel)
        result.bytes += entry["bytes"]

    def _remote_manifest(self) -> tuple[dict[str, Any] | None, str | None]:
        try:
            obj = self.s3.get_object(Bucket=self.dest.bucket, Key=self.dest.key(MANIFEST_NAME))
        except Exception as e:
            if _missing(e):
                return None, None
            raise
        try:
            return json.loads(obj["Body"].read()), obj.get("ETag")
        except ValueError:
            return {}, obj.get("ETag")

    def sync(self, final: bool = False) -> SyncResult:
        """Upload every finished part not yet in the bucket, then the manifest.

        Raises a FlowtapeError (Unreachable when the store did not answer: retry later; the
        parts stay on disk). `final`: the manifest is uploaded even when no part changed (the
        tape was just marked complete).
        """
        with self._lock:
            t0 = time.monotonic()
            try:
                return self._sync(final, t0)
            except FlowtapeError:
                raise
            except Exception as e:
                raise s3_error(e, self.dest.url) from None

    def _sync(self, final: bool, t0: float) -> SyncResult:
        result = SyncResult()
        local = read_manifest(self.tape)
        done: dict[str, str] = self.state["parts"]
        todo = [(rel, e) for rel, e in sorted(local["files"].items()) if done.get(rel) != e["sha256"]]
        if todo or self.state.get("manifest_etag") is None:
            remote, etag = self._remote_manifest()
            if remote is not None and etag != self.state.get("manifest_etag"):
                # someone else's manifest at this destination (another node of the same name, a tape
                # recorded before on a fresh disk): adopt it only if it is ours so far
                foreign = [rel for rel, e in remote.get("files", {}).items()
                           if local["files"].get(rel, {}).get("sha256") != e.get("sha256")]
                if foreign or remote.get("created_ns") not in (None, local["created_ns"]):
                    raise TapeError(f"{self.dest.url}: holds another tape (its manifest lists {len(foreign)} part(s) this tape lacks "
                                    f"or was created at another time); nothing was overwritten: upload to another prefix")
        for rel, entry in todo:
            self._put_part(rel, entry, result)
            done[rel] = entry["sha256"]
            self._save_state()  # noted at once: a restart does not upload it again
        if todo or final or self.state.get("manifest_updated_ns") != local["updated_ns"]:
            remote = dict(local)
            remote["files"] = {rel: e for rel, e in local["files"].items() if done.get(rel) == e["sha256"]}
            _recount(remote)
            body = (json.dumps(remote, indent=1, sort_keys=True) + "\n").encode()
            resp = self.s3.put_object(Bucket=self.dest.bucket, Key=self.dest.key(MANIFEST_NAME), Body=body,
                                      ContentType="application/json", ChecksumSHA256=base64.b64encode(hashlib.sha256(body).digest()).decode())
            self.state["manifest_etag"] = resp.get("ETag")
            self.state["manifest_updated_ns"] = local["updated_ns"]
            self._save_state()
            result.manifest = True
        result.pending = sum(1 for rel, e in local["files"].items() if done.get(rel) != e["sha256"])
        result.seconds = time.monotonic() - t0
        return result


class UploadLoop:
    """Sync a tape being written to a bucket from a thread: after each rotation, and again and
    again (with backoff) while the store is unreachable. Recording never waits for it.

    `log` gets one line when uploads stop (and why) and one when they resume.
    """

    def __init__(self, uploader: Uploader, log: Callable[[str], None], poll_s: float = 1.0, max_backoff_s: float = 30.0):
        self.up = uploader
        self.log = log
        self.poll_s = poll_s
        self.max_backoff_s = max_backoff_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen_mtime: int | None = None
        self.failing: FlowtapeError | None = None
        self.syncs: list[SyncResult] = []

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="flowtape-upload", daemon=True)
        self._thread.start()

    def _manifest_mtime(self) -> int | None:
        try:
            return (self.up.tape / MANIFEST_NAME).stat().st_mtime_ns
        except OSError:
            return None

    def _once(self, final: bool = False) -> bool:
        try:
            r = self.up.sync(final=final)
        except FlowtapeError as e:
            if self.failing is None or self.failing.message != e.message:
                self.log(f"upload paused: {e.message}; parts are kept locally and retried")
            self.failing = e
            return False
        if r.uploaded or r.manifest:
            self.syncs.append(r)
        if self.failing is not None:
            self.log(f"upload resumed: {len(r.uploaded)} part(s) caught up to {self.up.dest.url}")
            self.failing = None
        return True

    def _run(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            mtime = self._manifest_mtime()
            if mtime != self._seen_mtime or self.failing is not None:
                if self._once():
                    self._seen_mtime = mtime
                    backoff = 1.0
                else:
                    # jitter: a DaemonSet's nodes must not all retry in step after an outage
                    self._stop.wait(backoff * random.uniform(0.5, 1.0))
                    backoff = min(backoff * 2, self.max_backoff_s)
                    continue
            self._stop.wait(self.poll_s)

    def stop(self) -> None:
        """Stop the thread without a last sync (the recorder failed; `flowtape push` finishes later)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def finish(self, timeout_s: float) -> SyncResult | None:
        """Stop the thread, then sync until complete or `timeout_s` passed; the last result, or
        None when the store stayed unreachable (self.failing says why)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        deadline = time.monotonic() + timeout_s
        delay = 0.5
        while True:
            if self._once(final=True):
                return self.syncs[-1] if self.syncs else SyncResult()
            if time.monotonic() + delay > deadline:
                return None
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def push(tape: str | os.PathLike, dest: str, s3: Any = None) -> tuple[Uploader, SyncResult]:
    """Upload a local tape (or what of it is not there yet) to `dest`."""
    path = Path(tape)
    read_manifest(path)  # one line if it is not a tape
    s3 = s3 if s3 is not None else client()
    loc = parse_url(dest)
    check_bucket(s3, loc)
    up = Uploader(path, loc, s3)
    return up, up.sync(final=True)


# --- download --------------------------------------------------------------------------------


def manifest_at(s3: Any, loc: S3Location) -> dict[str, Any]:
    """The manifest of the tape at `loc` (TapeError with one line when there is none)."""
    where = loc.url
    try:
        obj = s3.get_object(Bucket=loc.bucket, Key=loc.key(MANIFEST_NAME))
        text = obj["Body"].read()
    except Exception as e:
        if _missing(e):
            check_bucket(s3, loc)
            raise TapeError(f"{where}: no tape there (no {MANIFEST_NAME}); `flowtape ls {SCHEME}{loc.bucket}/` lists the tapes") from None
        raise s3_error(e, where) from None
    try:
        m = json.loads(text)
    except ValueError as e:
        raise TapeError(f"{where}{MANIFEST_NAME}: corrupt manifest (invalid JSON: {e})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT or not isinstance(m.get("files"), dict):
        raise TapeError(f"{where}{MANIFEST_NAME}: not a {FORMAT} manifest")
    return m


def list_tapes(url: str, s3: Any = None) -> list[S3Location]:
    """The tapes at `url`: the tape itself if it has a manifest, else every tape directly under it."""
    s3 = s3 if s3 is not None else client()
    loc = parse_url(url)
    try:
        s3.head_object(Bucket=loc.bucket, Key=loc.key(MANIFEST_NAME))
        return [loc]
    except Exception as e:
        if not _missing(e):
            raise s3_error(e, loc.url) from None
    found = []
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=loc.prefix, Delimiter="/"):
            for cp in page.get("CommonPrefixes", []):
                sub = S3Location(loc.bucket, cp["Prefix"])
                if sub.is_tape or _has_manifest(s3, sub):
                    found.append(sub)
    except Exception as e:
        if _missing(e):
            check_bucket(s3, loc)
        raise s3_error(e, loc.url) from None
    return sorted(found, key=lambda x: x.prefix)


def _has_manifest(s3: Any, loc: S3Location) -> bool:
    try:
        s3.head_object(Bucket=loc.bucket, Key=loc.key(MANIFEST_NAME))
        return True
    except Exception as e:
        if _missing(e):
            return False
        raise


@dataclass
class PullResult:
    tape: Path
    fetched: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)  # already on disk with the right sha256
    missing: list[str] = field(default_factory=list)  # listed in the remote manifest, not in the bucket
    skipped: int = 0  # outside the time range
    bytes: int = 0
    seconds: float = 0.0


def _overlaps(entry: dict[str, Any], since_ns: int | None, until_ns: int | None) -> bool:
    if entry["table"] in STATE_TABLES:
        return True  # Kubernetes versions name the rows of any time range
    lo, hi = entry.get("ts_min_ns"), entry.get("ts_max_ns")
    if lo is None or hi is None:
        return True
    return (until_ns is None or lo < until_ns) and (since_ns is None or hi >= since_ns)


def pull(url: str, out: str | os.PathLike, since_ns: int | None = None, until_ns: int | None = None,
         s3: Any = None, workers: int = 4) -> PullResult:
    """Fetch the tape at `url` into the folder `out` (parts overlapping [since, until) only, plus
    the Kubernetes tables whole). Parts already in `out` with the listed sha256 are kept, so a
    pull that was cut off (or an earlier open's cache) is resumed, not redone.

    Each part is fetched to a temporary name, checked against the manifest's sha256 and renamed;
    the local manifest, written last, lists what was fetched.
    """
    t0 = time.monotonic()
    s3 = s3 if s3 is not None else client()
    loc = parse_url(url)
    m = manifest_at(s3, loc)
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise UsageError(f"{out}: exists and is not a folder; choose a new -o path")
        mine = out / MANIFEST_NAME
        if any(out.iterdir()) and mine.exists():
            prev = read_manifest(out)
            if prev.get("extra", {}).get("pulled_from", {}).get("url") != loc.url:
                raise UsageError(f"{out}: already holds another tape; choose a new -o path")
        elif any(p for p in out.iterdir() if not p.name.startswith(".")):
            raise UsageError(f"{out}: already exists and is not empty; choose a new -o path")
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    result = PullResult(out)
    wanted = {rel: e for rel, e in m["files"].items() if _overlaps(e, since_ns, until_ns)}
    result.skipped = len(m["files"]) - len(wanted)
    for rel in wanted:
        if not _safe_rel(rel):
            raise TapeError(f"{loc.url}{MANIFEST_NAME}: file entry {rel!r} is not a <table>/node=<node>/part-N.parquet path")

    def fetch(item: tuple[str, dict[str, Any]]) -> tuple[str, str, int]:
        rel, entry = item
        dst = out / rel
        if dst.exists() and dst.stat().st_size == entry["bytes"] and sha256_file(dst) == entry["sha256"]:
            return rel, "cached", 0
        dst.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.tmp")
        try:
            s3.download_file(loc.bucket, loc.key(rel), str(tmp))
        except Exception as e:
            tmp.unlink(missing_ok=True)
            if _missing(e):
                return rel, "missing", 0
            raise s3_error(e, f"{loc.url}{rel}") from None
        got = sha256_file(tmp)
        if got != entry["sha256"]:
            tmp.unlink(missing_ok=True)
            raise TapeError(f"{loc.url}{rel}: sha256 {got[:12]}… does not match the manifest's {entry['sha256'][:12]}…; not kept")
        os.chmod(tmp, 0o600)
        os.replace(tmp, dst)
        return rel, "fetched", entry["bytes"]

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for rel, how, n in pool.map(fetch, sorted(wanted.items())):
            getattr(result, how).append(rel)
            result.bytes += n
    local = dict(m)
    local["files"] = {rel: e for rel, e in wanted.items() if rel not in result.missing}
    _recount(local)
    extra = dict(local.get("extra") or {})
    extra["pulled_from"] = {"url": loc.url, "since_ns": since_ns, "until_ns": until_ns, "parts_skipped": result.skipped,
                            "parts_missing": sorted(result.missing)}
    local["extra"] = extra
    write_atomic(out / MANIFEST_NAME, (json.dumps(local, indent=1, sort_keys=True) + "\n").encode())
    result.seconds = time.monotonic() - t0
    return result


def _safe_rel(rel: str) -> bool:
    """A manifest from a bucket is input: its paths must stay inside the tape folder."""
    parts = PurePosixPath(rel).parts
    return (len(parts) == 3 and parts[0] in TABLES and parts[1].startswith("node=") and parts[2].startswith("part-")
            and parts[2].endswith(".parquet") and ".." not in parts and not rel.startswith("/"))


def state_path(tape: Path, dest: S3Location) -> Path:
    """Where an upload's state is kept: the cache folder, one file per (tape, destination)."""
    key = hashlib.sha256(f"{Path(tape).resolve()}\0{dest.url}".encode()).hexdigest()[:24]
    return cache_dir() / "uploads" / f"{key}.json"


def cache_dir() -> Path:
    base = os.environ.get(CACHE_ENV) or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "flowtape")
    return Path(base)


def cached(url: str, s3: Any = None) -> tuple[Path, PullResult]:
    """The tape at `url` fetched into the local cache (only parts not cached yet are downloaded)."""
    loc = parse_url(url)
    where = cache_dir() / "s3" / loc.bucket / loc.prefix.strip("/")
    return where, pull(loc.url, where, s3=s3)

