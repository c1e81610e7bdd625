"""Every call the milvus backend makes to Milvus: each with a deadline, at a stated
consistency level, and its errors as the index's own.

Deadlines: pymilvus retries a failed RPC for as long as its timeout allows, 75 times when it
has none; every call here has one (`timeout_s`), so a Milvus that does not answer costs a
caller that long, then UNAVAILABLE. The service runs these calls in threads, never on its
event loop.

Consistency, and why a write acknowledged by one replica is seen by every replica's reads:
- Reads run at Bounded consistency: Milvus answers at once from what its query nodes have
  consumed, waiting only when they lag more than its staleness bound (5 s by default).
- A write is acknowledged only once Milvus serves it: after the upsert or delete, `settle`
  runs a one-row query at Strong consistency, which waits until the query nodes have consumed
  everything written before it (Milvus's time tick, every 200 ms by default). From then on
  every read, through any replica and at any level, sees the write. (Session consistency
  would wait for this client's last write only, but pymilvus records no timestamp for a
  delete, so a delete would not be waited for.)
Strong reads would give the same guarantee by waiting for the next time tick on every
search (~200 ms each); here the wait is paid once per write call instead.

Errors: Milvus before 2.4 answers most failures with code 65535 and a message, so they are
classified by code where it says enough and by message where it does not:
- transient (the index is down, loading, overloaded, or the deadline passed) ->
  IndexUnavailable (UNAVAILABLE; a retry can succeed);
- the request's fault (an expression or parameter Milvus refuses) -> InvalidArgument;
- what this Milvus cannot do -> IndexUnsupported (FAILED_PRECONDITION);
- the collection is gone -> MilvusCollectionGone, which the collection turns into
  CollectionNotFound;
- anything else -> IndexFailed (INTERNAL, logged with its cause).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from pymilvus import MilvusClient, MilvusException
from pymilvus.exceptions import DataTypeNotMatchException, ParamError

from embedsense.server.index.errors import (
    IndexFailed,
    IndexStoreError,
    IndexUnavailable,
    IndexUnsupported,
    InvalidArgument,
)

log = logging.getLogger(__name__)


def _route_pymilvus_logs() -> None:
    """pymilvus logs every failed call with its trace through a handler of its own, in a
    format of its own: a JSON log got plain-text tracebacks, hundreds a minute while a
    Milvus was down. Every such error is classified here and reaches its caller (the
    unexpected ones logged with their cause), so pymilvus's own lines are left out; what
    it might still say goes through the server's handlers, in the server's format."""
    for name in ("pymilvus", "pymilvus.milvus_client", "pymilvus.bulk_writer"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.CRITICAL)


_route_pymilvus_logs()  # once pymilvus, imported above, has set up its own

# While its Milvus is away, a gRPC channel tries to reconnect with waits that grow to 2 min,
# and looks its name up again at most every 30 s: capped here, a Milvus that is back (at a
# new address, a container made anew) is found within about a second.
CHANNEL_OPTIONS = {
    "grpc.max_reconnect_backoff_ms": 1000,
    "grpc.dns_min_time_between_resolutions_ms": 1000,
}
# What gRPC says of a Milvus it cannot connect to (refused, no such name).
UNREACHABLE = ("failed to connect", "dns resolution failed")


def open_client(uri: str, token: str, timeout_s: float) -> MilvusClient:
    """A MilvusClient on a connection of its own (pymilvus otherwise shares one per URI, and
    a shared one that sat idle, Milvus having sent GOAWAY, failed the next client's connect
    instead of being replaced), which reconnects as gRPC does."""
    client = MilvusClient(
        uri=uri, token=token, timeout=timeout_s, dedicated=True,
        grpc_options=CHANNEL_OPTIONS,
    )  # fmt: skip
    # pymilvus answers a call's UNAVAILABLE by building the channel anew and waiting for it,
    # up to the timeout, under one lock for all calls: while a Milvus took connections and
    # answered none, calls at once waited in turn, a deadline each (3, 6, 9, 12 s at 3).
    # (Its global-cluster topology refresh goes with it: such URIs are not supported here.)
    handler = client._get_connection()
    assert hasattr(handler, "_on_rpc_error"), "pymilvus changed: see pyproject's pin"
    handler._on_rpc_error = _fail_when_unreachable
    return client


def _fail_when_unreachable(error: Exception) -> bool:
    """pymilvus's hook after a failed try, in place of its channel rebuilding: a Milvus that
    cannot be connected to is said at once (the error raised; callers retry it with backoff,
    while the channel reconnects by itself). Other failures: False, pymilvus then retries
    them within the call's deadline as before (True would retry a MilvusException too)."""
    if isinstance(error, grpc.RpcError):
        if any(words in (error.details() or "").lower() for words in UNREACHABLE):
            raise error
    return False


READ = "Bounded"  # see the module docstring
SETTLE = "Strong"

COLLECTION_NOT_FOUND = 100
COLLECTION_NOT_LOADED = 101
NOT_LOADED_MESSAGES = ("not loaded", "released")
UNDEFINED = 65535  # Milvus before 2.4, for most errors (the module docstring)
ALIAS_NOT_FOUND = 1600
ALIAS_EXISTS = 1602
# Milvus's error codes (pkg/util/merr) for an index that is not ready, overloaded or
# unreachable: service not ready/unavailable, memory/request/disk/rate limits, force deny,
# time tick lag; collection not fully loaded, recovering; replica, channel, segment and
# node not available; storage I/O. (Not loaded, 101, is MilvusNotLoaded: loaded, and again.)
TRANSIENT_CODES = frozenset(
    {1, 2, 3, 4, 7, 8, 9, 11, 103, 106, 401, 501, 503, 601, 602, 901, 902, 903, 905, 1001}
)
INVALID_CODES = frozenset({105, 1100, 1200})  # illegal schema, invalid parameter, metric
UNSUPPORTED_CODES = frozenset({10, 102, 701, 801})  # unimplemented, limits, index type
TRANSIENT_GRPC = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
    }
)
# Code 65535 (Milvus < 2.4): what the message says.
INVALID_MESSAGES = (
    "cannot parse expression",
    "invalid expression",
    "invalid parameter",
    "dimension",
    "not match",
    "exceeds max length",
    "out of range",
)
UNSUPPORTED_MESSAGES = ("unsupported pattern", "not supported", "unsupported")
TRANSIENT_MESSAGES = (
    "not loaded",
    "not ready",
    "unavailable",
    "no available",
    "timeout",
    "deadline",
    "rate limit",
    "shard leader",
    "channel not",
    "node not",
    "not healthy",
    "stopping",
    "connection",
    "too many requests",
)


class MilvusCollectionGone(IndexStoreError):
    """Milvus says the collection it was asked about does not exist (code 100)."""


class MilvusNotLoaded(IndexUnavailable):
    """Milvus holds the collection but does not serve it: released, or not loaded (code
    101; Milvus before 2.4 says so in words)."""


class MilvusAliasTaken(IndexStoreError):
    """Milvus refused an alias because it exists (code 1602): another replica's claim."""


class MilvusAliasMissing(IndexStoreError):
    """Milvus has no such alias (code 1600; milvus-lite says so with code 100)."""


def classify(err: BaseException, what: str) -> IndexStoreError:
    """The index's error for a pymilvus or gRPC error raised while doing `what`."""
    if isinstance(err, (ParamError, DataTypeNotMatchException)):  # pymilvus refused it
        return InvalidArgument(f"{what}: {err.message}")
    if isinstance(err, grpc.RpcError):
        code, message = err.code(), err.details() or str(err.code())
    elif isinstance(err, MilvusException):
        code, message = err.code, err.message
    else:
        return IndexFailed(f"{what}: {type(err).__name__}: {err}")
    if isinstance(code, grpc.StatusCode):  # the RPC itself failed, or pymilvus ran out of time
        if code in TRANSIENT_GRPC:
            return IndexUnavailable(f"milvus did not answer ({what}): {message}")
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return InvalidArgument(f"{what}: {message}")
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            return IndexUnsupported(f"milvus refused the server's credentials ({what}): {message}")
        return IndexFailed(f"{what}: {code}: {message}")
    lowered = str(message).lower()
    if code == ALIAS_NOT_FOUND or (
        code in (COLLECTION_NOT_FOUND, UNDEFINED)  # milvus-lite's, and Milvus before 2.4
        and lowered.startswith("alias ")
        and ("not found" in lowered or "does not exist" in lowered)
    ):
        return MilvusAliasMissing(f"{what}: {message}")
    if code == COLLECTION_NOT_FOUND:
        return MilvusCollectionGone(f"{what}: {message}")
    if code == COLLECTION_NOT_LOADED or (
        code == UNDEFINED and any(m in lowered for m in NOT_LOADED_MESSAGES)
    ):
        return MilvusNotLoaded(f"milvus ({what}): {message}")
    if code == ALIAS_EXISTS or ("alias" in lowered and "already exist" in lowered):
        return MilvusAliasTaken(f"{what}: {message}")
    if code in TRANSIENT_CODES:
        return IndexUnavailable(f"milvus ({what}): {message}")
    if code in INVALID_CODES or any(m in lowered for m in INVALID_MESSAGES):
        return InvalidArgument(f"{what}: milvus refused it: {message}")
    if code in UNSUPPORTED_CODES or any(m in lowered for m in UNSUPPORTED_MESSAGES):
        return IndexUnsupported(f"{what}: this milvus cannot: {message}")
    if any(m in lowered for m in TRANSIENT_MESSAGES):
        return IndexUnavailable(f"milvus ({what}): {message}")
    return IndexFailed(f"{what}: milvus error {code}: {message}")


class MilvusCalls:
    """A MilvusClient whose every call has a deadline and raises only the index's errors."""

    def __init__(self, client: MilvusClient, timeout_s: float) -> None:
        self.client = client
        self.timeout_s = timeout_s
        self._unanswered: set[str] = set()  # segment lists this Milvus refuses to give

    def __call__(self, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """client.<method>(*args, **kwargs), with the deadline; `what` names the work in
        errors ("upsert into 'news'"). A collection Milvus holds but does not serve is loaded,
        and the call made once more: milvus-lite opens a file's collections released (every
        call after a restart failed), and an operator may release one; a Milvus that
        restarts loads again what it served before."""
        try:
            return self._call(self.client, what, method, *args, **kwargs)
        except MilvusNotLoaded:
            collection = args[0] if args else kwargs.get("collection_name")
            if method == "load_collection" or not isinstance(collection, str):
                raise
            log.warning("milvus does not serve %s (%s): loading it", collection, what)
            self._call(self.client, what, "load_collection", collection)
            return self._call(self.client, what, method, *args, **kwargs)

    def _call(self, target: Any, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout_s
        try:
            return getattr(target, method)(*args, **kwargs)
        except (MilvusException, grpc.RpcError) as err:
            classified = classify(err, what)
            if isinstance(classified, IndexFailed):
                log.error("milvus %s failed: %s", what, err)
            raise classified from err

    def create_collection(
        self, what: str, name: str, schema: Any, index: Any, consistency_level: str
    ) -> None:
        """Collection `name`, indexed and loaded (served at once), as MilvusClient's
        create_collection makes it with index_params, less its wait for the index build."""
        self(what, "create_collection", name, schema=schema, consistency_level=consistency_level)
        # sync=False: pymilvus would wait for the index to be built over the rows the
        # collection holds, and a new one holds none; Milvus records the index before it
        # answers, which is all the load needs. That wait first asks Milvus for a timestamp
        # (AllocTimestamp), which milvus-lite does not implement (its gRPC server logged an
        # ERROR on every create), then polls the index state 0.5 s later (each create took it).
        self(what, "create_index", name, index, sync=False)
        self(what, "load_collection", name)

    def query(
        self, what: str, collection: str, expression: str, fields: list[str], **kwargs: Any
    ) -> list[dict]:
        kwargs.setdefault("consistency_level", READ)
        return list(
            self(what, "query", collection, filter=expression, output_fields=fields, **kwargs)
        )

    def settle(self, what: str, *targets: tuple[str, str]) -> None:
        """Wait until the writes to these (collection, primary key field) are served (module
        docstring). Several wait in parallel: one after another, each would wait for a
        time tick of its own."""

        def one(target: tuple[str, str]) -> None:
            collection, key = target
            self.query(what, collection, f'{key} in [""]', [key], limit=1, consistency_level=SETTLE)

        if len(targets) == 1:
            one(targets[0])
            return
        with ThreadPoolExecutor(len(targets)) as pool:
            list(pool.map(one, targets))

    def loaded_segments(
        self, what: str, collection: str, timeout: float | None = None
    ) -> list[Any] | None:
        """The segments the query nodes serve (segmentID, num_rows, index_name, state); None
        where this Milvus does not say (milvus-lite)."""
        # milvus-lite's refusal is not one of Milvus's "unsupported" codes: any failure reads
        # as one here (a Milvus that lists none is waited for no more than milvus-lite).
        return self._segments(
            "get_query_segment_info", what, collection, timeout, (IndexUnsupported, IndexFailed)
        )

    def persistent_segments(
        self, what: str, collection: str, timeout: float | None = None
    ) -> list[Any] | None:
        """The segments Milvus keeps (sealed or flushed; not those merged away); None where
        this Milvus does not say (refuses the call as unsupported)."""
        return self._segments(
            "get_persistent_segment_infos", what, collection, timeout, (IndexUnsupported,)
        )

    def _segments(
        self,
        method: str,
        what: str,
        collection: str,
        timeout: float | None,
        refusals: tuple[type[IndexStoreError], ...],
    ) -> list[Any] | None:
        # MilvusClient has no call of its own for segments: its connection has.
        handler = self.client._get_connection()
        if method in self._unanswered or not hasattr(handler, method):
            return None
        try:
            return list(getattr(handler, method)(collection, timeout=timeout or self.timeout_s))
        except (MilvusException, grpc.RpcError) as err:
            classified = classify(err, what)
            if isinstance(classified, refusals):
                self._unanswered.add(method)  # not asked again: pymilvus logs each refusal
                log.info("milvus does not say %s (%s): %s", method, what, classified)
                return None
            raise classified from err
