"""Every table of a tape and its manifest: the single source of truth for the format.

A column is declared once, here, with its Arrow type and a sentence that says what it
means, its unit and when it is null. `docs/schema.md` is generated from this module
(`flowtape schema --markdown`); a test fails when it is stale.

Conventions (after Zeek and Cilium's flow.proto):
- timestamps are `timestamp[ns, tz=UTC]` wall-clock; durations are int64 nanoseconds named
  `*_ns`, or carry their unit in the name (`srtt_us`);
- IPs are canonical text (`198.18.0.1`, `2001:db8::1`), ports are uint16;
- names are symmetric (`src_`/`dst_`, `client_`/`server_`) and a code is paired with its
  name (`rcode`, `rcode_name`);
- null means unknown or not applicable, never zero.

`node` (the recorder's node) is the Hive partition key (`<table>/node=<node>/part-*.parquet`):
it is not stored inside part files, and every view of a tape has it as a column.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import pyarrow as pa

FORMAT = "flowtape/1"
"""Format version written to every manifest. Readers refuse any other."""

PARTITION_KEY = "node"

TS = pa.timestamp("ns", tz="UTC")
IP = pa.string()
PORT = pa.uint16()
LABELS = pa.map_(pa.string(), pa.string())


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    doc: str
    nullable: bool = True
    # A column added to a table after tapes were written without it (still format flowtape/1):
    # readers take such parts and show the column as null there. Its value names the release.
    added: str | None = None
    # A column that became nullable in a later release: parts without a null in it are still
    # written with it required, byte for byte as before (and as older readers expect).
    nullable_since: str | None = None


@dataclass(frozen=True)
class Table:
    name: str
    doc: str
    columns: tuple[Column, ...]
    time_column: str
    kind: str = "event"  # "event" (one row per thing seen) or "state" (k8s versions)
    sort_by: tuple[str, ...] = field(default=())
    # State tables: what identifies one versioned thing (with node and valid_from). A version is
    # written when it opens (valid_to null) and again when it closes; readers keep, per
    # (node, *key, valid_from), the row whose valid_to is set if there is one.
    key: tuple[str, ...] = field(default=())

    @property
    def arrow_schema(self) -> pa.Schema:
        """Schema of the table as stored in part files (without the partition key)."""
        return pa.schema(
            [pa.field(c.name, c.type, nullable=c.nullable) for c in self.columns if c.name != PARTITION_KEY]
        )

    @property
    def view_schema(self) -> pa.Schema:
        """Schema as seen through a Tape view: stored columns plus `node`, in declared order."""
        return pa.schema([pa.field(c.name, c.type, nullable=c.nullable) for c in self.columns])

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


def C(name: str, type_: pa.DataType, doc: str, nullable: bool = True, added: str | None = None,
      nullable_since: str | None = None) -> Column:
    return Column(name, type_, doc, nullable, added, nullable_since)


NODE = C("node", pa.string(), "Name of the node whose recorder wrote the row (the Hive partition key).", False)

# --- flows -------------------------------------------------------------------------------

FLOWS = Table(
    "flows",
    "One direction of an L3/L4 flow over one export interval, aggregated in the kernel. "
    "A packet is counted once per node, at the first covered interface it meets (`iface`): on "
    "ingress, or on egress when it did not enter the node through a covered interface "
    "(locally sent; `__sk_buff.ingress_ifindex`). A bridge's ports count what enters them and the "
    "bridge counts what the host sends into it (`iface` is then the bridge); loopback counts on "
    "egress only. So a packet crossing pod veth -> bridge -> veth or NIC is one packet. Packets are wire packets: a GSO super-packet counts as its segments. "
    "See docs/recorder.md.",
    (
        C("ts_start", TS, "Time the first packet of this flow was seen in this interval.", False),
        C("ts_end", TS, "Time the last packet of this flow was seen in this interval.", False),
        NODE,
        C("iface", pa.string(), "Interface name where the packets were counted (null if unknown)."),
        C("ifindex", pa.uint32(), "Interface index where the packets were counted."),
        C("direction", pa.string(), "'ingress' or 'egress' relative to `iface`; null if unknown."),
        C("src_mac", pa.string(), "Source MAC address, lower-case colon form; null for non-Ethernet links."),
        C("dst_mac", pa.string(), "Destination MAC address, lower-case colon form; null for non-Ethernet links."),
        C("src_ip", IP, "Source IP address (v4 or v6, canonical text).", False),
        C("dst_ip", IP, "Destination IP address (v4 or v6, canonical text).", False),
        C("src_port", PORT, "Source port for TCP/UDP/SCTP; null for protocols without ports."),
        C("dst_port", PORT, "Destination port for TCP/UDP/SCTP; null for protocols without ports."),
        C("l4", pa.string(), "Transport protocol name: 'tcp', 'udp', 'icmp', 'icmpv6', 'sctp' or 'ip<N>'.", False),
        C("ip_proto", pa.uint8(), "IP protocol number (6 tcp, 17 udp, 1 icmp, 58 icmpv6).", False),
        C("packets", pa.uint64(), "Packets of this flow direction in the interval.", False),
        C("bytes", pa.uint64(), "Bytes in the interval, IP total length (IP and L4 headers included, link header excluded).", False),
        C("tcp_flags", pa.uint16(), "OR of the TCP flags of every packet in the interval (FIN=1 SYN=2 RST=4 PSH=8 ACK=16 URG=32 ECE=64 CWR=128); null for non-TCP."),
    ),
    time_column="ts_start",
)

# --- connections -------------------------------------------------------------------------

CONNECTIONS = Table(
    "connections",
    "One TCP connection's life as seen by one local endpoint (like Zeek's conn.log). A connection "
    "between two processes on the same node gives a client row and a server row.",
    (
        C("conn_id", pa.string(), "Identifier of the connection, unique within the tape; `http.conn_id` joins to it.", False),
        C("ts_start", TS, "Client: time connect() was called. Server: time the handshake completed (accept queue).", False),
        C("ts_end", TS, "Time the connection reached CLOSE; null if it was still open when recording stopped."),
        NODE,
        C("role", pa.string(), "'client' (this node's endpoint called connect) or 'server' (it accepted).", False),
        C("client_ip", IP, "IP of the endpoint that opened the connection.", False),
        C("client_port", PORT, "Port of the endpoint that opened the connection.", False),
        C("server_ip", IP, "IP of the endpoint that accepted the connection.", False),
        C("server_port", PORT, "Port of the endpoint that accepted the connection.", False),
        C("pid", pa.int32(), "Process (thread group) id owning the local socket; null if no process was seen."),
        C("comm", pa.string(), "Command name (task comm, at most 15 characters) of `pid`; null with it."),
        C("cgroup_id", pa.uint64(), "cgroup v2 id of the owning process; null if unknown."),
        C("container_id", pa.string(), "Container id parsed from the cgroup path (64 hex chars); null outside containers."),
        C("bytes_sent", pa.uint64(), "TCP payload bytes sent by the local endpoint and acknowledged (retransmissions not counted twice); null if unknown or still open at tape end (a recording; an imported capture counts what it saw, in sequence space)."),
        C("bytes_received", pa.uint64(), "TCP payload bytes received by the local endpoint (in order); null if unknown or still open at tape end."),
        C("segs_sent", pa.uint64(), "TCP segments sent by the local endpoint, SYN, FIN and pure ACKs included; null if unknown or still open at tape end."),
        C("segs_received", pa.uint64(), "TCP segments received by the local endpoint; null if unknown."),
        C("srtt_us", pa.uint32(), "Smoothed round-trip time at close, microseconds; null if unknown or still open at tape end (counters are read at state changes). Imported captures: the handshake's round trip."),
        C("retransmits", pa.uint32(), "Segments retransmitted by the local endpoint; null if unknown."),
        C("connect_latency_ns", pa.int64(), "Client: connect() to ESTABLISHED, nanoseconds. Null for server rows and failed connects."),
        C("close_state", pa.string(), "How it ended: 'closed' (FIN), 'reset', 'refused' (RST to SYN), 'timeout' (SYN never answered), 'failed', or 'open' when still open at tape end.", False),
        C("wire_trace_id", pa.string(), "Trace id carried below HTTP in the connection's packets (IPv4 option 136 or TCP option kind 25), 32 lower-case hex digits, first seen on its packets (either direction) while the endpoint lived, read by the live recorder (changes: table wire_trace_context); null when none was seen and in pcap imports.", added="0.3"),
        C("wire_span_id", pa.string(), "Span id with wire_trace_id, 16 hex digits (for the IPv4 option, which carries none: from that packet's TCP seq and ack, as wire_trace_context.span_id).", added="0.3"),
        C("wire_trace_source", pa.string(), "Where wire_trace_id was read: 'ip-option' or 'tcp-option'; null with it.", added="0.3"),
    ),
    time_column="ts_start",
)

# --- dns ---------------------------------------------------------------------------------

DNS_ANSWER = pa.struct(
    [
        pa.field("name", pa.string()),
        pa.field("type", pa.string()),
        pa.field("ttl", pa.uint32()),
        pa.field("data", pa.string()),
    ]
)

DNS = Table(
    "dns",
    "One DNS query and its answer, as seen on the wire on this node.",
    (
        C("ts_query", TS, "Time the query was seen (over TCP: the segment holding the first byte of its length prefix).", False),
        C("ts_answer", TS, "Time the answer was seen; null if no answer was seen."),
        C("latency_ns", pa.int64(), "ts_answer - ts_query in nanoseconds; null without an answer."),
        NODE,
        C("client_ip", IP, "IP that sent the query.", False),
        C("client_port", PORT, "Port that sent the query.", False),
        C("server_ip", IP, "IP the query was sent to.", False),
        C("server_port", PORT, "Port the query was sent to (53 unless unusual).", False),
        C("transport", pa.string(), "Transport of the exchange: 'udp' or 'tcp'.", False),
        C("pid", pa.int32(), "Process that sent the query; null when it was not seen on this node."),
        C("comm", pa.string(), "Command name of `pid`; null with it."),
        C("txid", pa.uint16(), "DNS transaction id of the query (pairs it with its answer).", False),
        C("qname", pa.string(), "Name asked for, lower-case, without the trailing dot.", False),
        C("qtype", pa.uint16(), "Query type code (1 A, 28 AAAA, 5 CNAME, ...).", False),
        C("qtype_name", pa.string(), "Query type name ('A', 'AAAA', ...).", False),
        C("rcode", pa.uint8(), "Response code; null without an answer."),
        C("rcode_name", pa.string(), "Response code name ('NOERROR', 'NXDOMAIN', 'SERVFAIL', ...); null without an answer."),
        C("answers", pa.list_(DNS_ANSWER), "Answer section records in order (CNAME chains included): name (lower-case, no trailing dot), type name, ttl seconds, data as text (dnslib's presentation form; CNAME/NS/PTR/DNAME targets normalised like names so chains join); null without an answer, empty list for an answer with none. When the answer was cut at the capture prefix, the records before the cut (counted in the manifest as dns_truncated)."),
    ),
    time_column="ts_query",
)

# --- http --------------------------------------------------------------------------------

HTTP = Table(
    "http",
    "One HTTP/1.x request and its response, or one HTTP/2 stream (a gRPC call is one), as seen by one local endpoint "
    "(client or server side). HTTP/2 comes from cleartext connections (h2c: prior knowledge) on the wire and from TLS "
    "plaintext (ALPN h2); columns added for it (stream_id onwards) are null for HTTP/1.x rows and in tapes written before them.",
    (
        C("ts_request", TS, "Time of the segment holding the first byte of the request head (HTTP/2: of the request's HEADERS frame).", False),
        C("ts_response", TS, "Time of the segment holding the first byte of the final (non-1xx) response head (HTTP/2: of the first response HEADERS frame with a final status); null without a response."),
        C("latency_ns", pa.int64(), "ts_response - ts_request in nanoseconds: from the first byte of the request to the first byte of the final response, as seen at this endpoint (time to first byte; a 100 Continue does not end it); null without a response."),
        NODE,
        C("conn_id", pa.string(), "The connection carrying the exchange (joins `connections.conn_id`); null if unknown."),
        C("client_ip", IP, "IP of the endpoint that opened the connection.", False),
        C("client_port", PORT, "Port of the endpoint that opened the connection.", False),
        C("server_ip", IP, "IP of the endpoint that accepted the connection, as the local socket saw it.", False),
        C("server_port", PORT, "Port of the endpoint that accepted the connection.", False),
        C("pid", pa.int32(), "Process of the local endpoint on `side`; null if unknown."),
        C("comm", pa.string(), "Command name of `pid`; null with it."),
        C("side", pa.string(), "'client' or 'server': which local endpoint observed the exchange.", False),
        C("tls", pa.bool_(), "True when the exchange was read as TLS plaintext (OpenSSL uprobes).", False),
        C("http_version", pa.string(), "'HTTP/1.0' or 'HTTP/1.1' from the request line; 'HTTP/2' for an HTTP/2 stream."),
        C("method", pa.string(), "Request method (GET, POST, HEAD, ...; HTTP/2: `:method`). Null only for an HTTP/2 stream whose request headers could not be decoded (headers_partial).", nullable_since="0.2"),
        C("host", pa.string(), "Host header value (HTTP/2: `:authority`, else `host`); null if absent, not on the redaction allow-list, or past the cut of a head longer than the capture prefix."),
        C("path", pa.string(), "Request target path (HTTP/2: `:path`). The query string's values are redacted to `?k=` unless recorded with --no-redact. Null only for an HTTP/2 stream whose `:path` could not be decoded (headers_partial).", nullable_since="0.2"),
        C("status", pa.uint16(), "Response status code (final, after any 1xx); null without a response."),
        C("request_bytes", pa.int64(), "Request size on the wire in bytes: head plus body (Content-Length, or chunked body with its framing); HTTP/2: the stream's HEADERS, CONTINUATION and DATA frames from the client, 9-byte frame headers and padding included (flow-control and RST_STREAM frames not). Null if unknown (head cut at the capture prefix, framing lost, or connection ended early)."),
        C("response_bytes", pa.int64(), "Response size on the wire in bytes: any 1xx interim heads, the final head, and its body (chunk framing included; to connection close when unframed); HTTP/2: the stream's HEADERS (trailers too), CONTINUATION and DATA frames from the server, counted as request_bytes. Null if unknown, as request_bytes."),
        C("traceparent", pa.string(), "W3C traceparent header of the request; null if absent, not on the allow-list, or past a head's cut."),
        C("user_agent", pa.string(), "User-Agent header (on the redaction allow-list by default); null if absent or redacted."),
        C("content_type", pa.string(), "Response Content-Type header (on the allow-list by default); null if absent or redacted."),
        C("stream_id", pa.uint32(), "HTTP/2 stream identifier (odd: opened by the client); null for HTTP/1.x.", added="0.2"),
        C("grpc_service", pa.string(), "gRPC service (`package.Service`) from `:path` `/package.Service/Method` of a stream whose content-type is application/grpc*; null otherwise.", added="0.2"),
        C("grpc_method", pa.string(), "gRPC method (`Method`) from the same `:path`; null otherwise.", added="0.2"),
        C("grpc_status", pa.int32(), "gRPC status code from the `grpc-status` trailer (or a Trailers-Only response): 0 OK, 4 DEADLINE_EXCEEDED, 5 NOT_FOUND, 14 UNAVAILABLE, ...; null when the call ended without it (reset, connection closed, or its field could not be decoded). docs/ci.md says which codes count as errors in reports, diff and check.", added="0.2"),
        C("grpc_message", pa.string(), "`grpc-message` trailer, percent-decoded (on the redaction allow-list by default: it can carry application data; drop it with --header-allow-list); null if absent or redacted.", added="0.2"),
        C("stream_error", pa.string(), "HTTP/2 error code name of the first RST_STREAM that ended the stream, from either side ('CANCEL' when a client gives up, e.g. at a gRPC deadline; 'NO_ERROR'; 'REFUSED_STREAM'; ...); null if the stream ended normally.", added="0.2"),
        C("headers_partial", pa.bool_(), "HTTP/2: true when a header field of this stream indexed HPACK state the recorder never saw (it joined the connection after its start, or a header block was not captured): the columns such fields would fill are null, never guessed; null for HTTP/1.x.", added="0.2"),
        C("tracestate", pa.string(), "W3C tracestate header of the request (HTTP/1 and HTTP/2); null if absent, not on the allow-list (it is by default), or past a head's cut.", added="0.3"),
        C("tid", pa.int32(), "Thread (kernel task id, as threading.get_native_id() or gettid() return it) that read the request (server side) or wrote it (client side): from sock:sock_recv_length/sock_send_length, the thread whose receive (server) or send (client) on the row's socket first followed a turn of the connection's direction next to ts_request. Null when not seen (the recorder missed the I/O, an event loop thread did it is still a tid), for rows of pcap imports, and where the kernel lacks those tracepoints.", added="0.3"),
        C("request_seq", pa.uint32(), "TCP sequence number of the request's first byte, in the client->server direction, as on the wire (raw, not relative; the client's and the server's row of one exchange carry the same value, through NAT too, so rows recorded on two nodes link exactly). "
          "Plain HTTP/1.x from packets (live or pcap): exact, also for a head that starts inside a segment. Null for TLS plaintext (the plaintext's offset is not the TCP stream's: records add their framing) and for HTTP/2 streams (their HEADERS frames share segments).", added="0.3"),
        C("response_seq", pa.uint32(), "TCP sequence number of the final response head's first byte (server->client), as request_seq; null without a response, and where request_seq is null.", added="0.3"),
        C("goroutine", pa.uint64(), "Go programs: the goroutine of the exchange side, as its g pointer (an identity only; reused after the goroutine exits): R14 at the syscall of the socket turn that gives `tid` (the request's reader on a server: net/http's serving goroutine, which runs the handler). For net/http's client, whose connection's writeLoop goroutine writes the request, the goroutine that handed it over (the caller of `(*persistConn).roundTrip` on that connection). Null for programs that are not Go (or not known as Go yet: a process running before the recorder counts from its next `go` statement), for rows of pcap imports, and where the kernel has no BTF (manifest `probes.l7.missing`).", added="0.3"),
    ),
    time_column="ts_request",
)

# --- wire_trace_context ------------------------------------------------------------------

WIRE_TRACE_CONTEXT = Table(
    "wire_trace_context",
    "A trace context carried below HTTP in a TCP flow's packets (IPv4 option 136 as OBI/Beyla write it, or TCP option "
    "kind 25), read by the recorder's TC programs without changing the packet: one row when a direction of a flow shows "
    "one for the first time, and one each time it changes (for the IPv4 option: its trace id; for the TCP option: trace "
    "or span id). Works for TLS connections too (no decryption). `connections.wire_*` holds the first one of each "
    "connection. With `flowtape record --inject-trace-context ip-option` the recorder also writes the ids it injects (read as the packets leave).",
    (
        C("ts", TS, "Time of the packet.", False),
        NODE,
        C("src_ip", IP, "Packet source IP.", False),
        C("src_port", PORT, "Packet source port.", False),
        C("dst_ip", IP, "Packet destination IP.", False),
        C("dst_port", PORT, "Packet destination port.", False),
        C("trace_id", pa.string(), "Trace id, 32 lower-case hex digits (the option's 16 bytes in order).", False),
        C("span_id", pa.string(), "Span id, 16 hex digits: the TCP option's 8 bytes; for the IPv4 option (which has none) the packet's TCP sequence then acknowledgement number, each as a little-endian u32, as OBI derives it.", False),
        C("source", pa.string(), "'ip-option' or 'tcp-option'.", False),
    ),
    time_column="ts",
)

# --- go_spawns ----------------------------------------------------------------------------

GO_SPAWNS = Table(
    "go_spawns",
    "A goroutine created by another in a Go program, for linking `http.goroutine` values into causal chains. Not "
    "every goroutine: spawns are kept in the kernel and a row is written when a goroutine's socket I/O first becomes "
    "an HTTP turn, for it and its ancestors up to 8 links (each link once), so the chains that serve or call HTTP "
    "link and goroutines that never do are left out. g pointers are reused after a goroutine exits: a link holds "
    "from its ts on, until the child's g is created again. Recorded for the Go binaries the recorder attached to "
    "(manifest `probes.l7.go_tls`).",
    (
        C("ts", TS, "Time the goroutine was created.", False),
        NODE,
        C("pid", pa.int32(), "Process (thread group) id of the Go program.", False),
        C("parent_g", pa.uint64(), "g pointer of the goroutine that called `go` (runtime.newproc1's callergp argument, read after its CALL in runtime.newproc.func1 from the slot its prologue spilled RBX to, or RBX at its entry: newproc1 runs on the system stack, where R14 is g0).", False),
        C("child_g", pa.uint64(), "g pointer of the new goroutine (RAX when runtime.newproc1 returned).", False),
    ),
    time_column="ts",
)

# --- tls ---------------------------------------------------------------------------------

TLS = Table(
    "tls",
    "One TLS handshake seen on the wire (from its ClientHello).",
    (
        C("ts", TS, "Time the ClientHello was seen.", False),
        NODE,
        C("client_ip", IP, "IP of the endpoint that opened the connection.", False),
        C("client_port", PORT, "Port of the endpoint that opened the connection.", False),
        C("server_ip", IP, "IP of the endpoint that accepted the connection, as the local socket saw it.", False),
        C("server_port", PORT, "Port of the endpoint that accepted the connection.", False),
        C("pid", pa.int32(), "Client process when seen on this node; null otherwise."),
        C("comm", pa.string(), "Command name of `pid`; null with it."),
        C("sni", pa.string(), "server_name extension (the host asked for), lower-case; null if absent or past the cut of a ClientHello longer than what was captured."),
        C("version", pa.string(), "Highest version offered: 'TLS 1.3' when supported_versions offers it, else the ClientHello's legacy version ('TLS 1.2', ...), which is also what a ClientHello cut before supported_versions shows.", False),
        C("alpn", pa.list_(pa.string()), "ALPN protocols offered, in order; null if the extension is absent."),
    ),
    time_column="ts",
)

# --- kubernetes state --------------------------------------------------------------------

VALIDITY = (
    C("valid_from", TS, "Start of this version's validity: when the change was observed (or the object's creationTimestamp for objects that existed before recording).", False),
    C("valid_to", TS, "End of validity (exclusive): the next version or the deletion; null if still valid at tape end."),
    NODE,
    C("observed_at_start", pa.bool_(), "True when the version was already there when recording started (valid_from is then the creationTimestamp, or the start when unknown).", False),
    C("deleted", pa.bool_(), "True when this version ended because the object was deleted.", False),
    C("resource_version", pa.string(), "Kubernetes resourceVersion of the object in this version; null for imported dumps without it."),
)

CONTAINER = pa.struct(
    [
        pa.field("name", pa.string()),
        pa.field("image", pa.string()),
        pa.field("container_id", pa.string()),
    ]
)

K8S_PODS = Table(
    "k8s_pods",
    "One version of a Pod, valid over [valid_from, valid_to).",
    VALIDITY
    + (
        C("uid", pa.string(), "Pod UID (stable across versions of one pod).", False),
        C("namespace", pa.string(), "Kubernetes namespace of the object.", False),
        C("name", pa.string(), "Pod name (metadata.name).", False),
        C("node_name", pa.string(), "Node the pod is scheduled on (spec.nodeName); null while pending."),
        C("ips", pa.list_(pa.string()), "Pod IPs (status.podIPs), canonical text; empty before one is assigned.", False),
        C("host_network", pa.bool_(), "True for hostNetwork pods (their IP is the node's).", False),
        C("phase", pa.string(), "status.phase: Pending, Running, Succeeded, Failed, Unknown."),
        C("labels", LABELS, "Pod labels (metadata.labels).", False),
        C("owner_kind", pa.string(), "Kind of the direct controller owner (ReplicaSet, Job, StatefulSet, DaemonSet, ...); null if none."),
        C("owner_name", pa.string(), "Name of the direct controller owner; null if none."),
        C("workload_kind", pa.string(), "Top of the owner chain (ReplicaSet->Deployment, Job->CronJob); 'Pod' for bare pods.", False),
        C("workload_name", pa.string(), "Name of the workload at the top of the owner chain; the pod name for bare pods.", False),
        C("containers", pa.list_(CONTAINER), "Containers: name, image and runtime container id (without the runtime:// prefix; null before start).", False),
    ),
    time_column="valid_from",
    kind="state",
    key=("uid",),
)

SERVICE_PORT = pa.struct(
    [
        pa.field("name", pa.string()),
        pa.field("protocol", pa.string()),
        pa.field("port", pa.uint16()),
        pa.field("target_port", pa.string()),
        pa.field("node_port", pa.uint16()),
    ]
)

K8S_SERVICES = Table(
    "k8s_services",
    "One version of a Service, valid over [valid_from, valid_to).",
    VALIDITY
    + (
        C("uid", pa.string(), "Service UID (stable across versions).", False),
        C("namespace", pa.string(), "Kubernetes namespace of the object.", False),
        C("name", pa.string(), "Service name (metadata.name).", False),
        C("type", pa.string(), "ClusterIP, NodePort, LoadBalancer or ExternalName.", False),
        C("cluster_ips", pa.list_(pa.string()), "spec.clusterIPs; empty for headless services.", False),
        C("external_ips", pa.list_(pa.string()), "spec.externalIPs and load-balancer ingress IPs.", False),
        C("ports", pa.list_(SERVICE_PORT), "Service ports: name, protocol, port, target_port (number or name, as text), node_port.", False),
        C("selector", LABELS, "Pod selector; empty when the service has none.", False),
        C("labels", LABELS, "Service labels (metadata.labels).", False),
        C("external_name", pa.string(), "spec.externalName for ExternalName services; null otherwise."),
    ),
    time_column="valid_from",
    kind="state",
    key=("uid",),
)

K8S_NODES = Table(
    "k8s_nodes",
    "One version of a Node, valid over [valid_from, valid_to).",
    VALIDITY
    + (
        C("uid", pa.string(), "Node UID (stable across versions).", False),
        C("name", pa.string(), "Node name (metadata.name).", False),
        C("internal_ips", pa.list_(pa.string()), "InternalIP addresses of the node (status.addresses).", False),
        C("external_ips", pa.list_(pa.string()), "ExternalIP addresses of the node (status.addresses).", False),
        C("pod_cidrs", pa.list_(pa.string()), "Pod CIDRs assigned to the node (spec.podCIDRs).", False),
        C("zone", pa.string(), "Label topology.kubernetes.io/zone; null if absent."),
        C("region", pa.string(), "Label topology.kubernetes.io/region; null if absent."),
        C("labels", LABELS, "Node labels (metadata.labels).", False),
    ),
    time_column="valid_from",
    kind="state",
    key=("uid",),
)

K8S_ENDPOINTS = Table(
    "k8s_endpoints",
    "One version of one endpoint (address and port) of a Service, from EndpointSlices, valid over [valid_from, valid_to).",
    VALIDITY
    + (
        C("namespace", pa.string(), "Namespace of the service.", False),
        C("service", pa.string(), "Service name (label kubernetes.io/service-name of the slice).", False),
        C("slice", pa.string(), "EndpointSlice name."),
        C("ip", IP, "Endpoint address (usually the pod IP).", False),
        C("port", PORT, "Endpoint port; null when the slice lists no ports."),
        C("protocol", pa.string(), "Port protocol (TCP, UDP, SCTP); null with port."),
        C("port_name", pa.string(), "Port name; null if unnamed."),
        C("pod", pa.string(), "Name of the target pod (targetRef); null if the target is not a pod."),
        C("node_name", pa.string(), "Node of the endpoint (nodeName); null if unknown."),
        C("zone", pa.string(), "Zone of the endpoint; null if unknown."),
        C("ready", pa.bool_(), "Endpoint ready condition; null if unknown."),
    ),
    time_column="valid_from",
    kind="state",
    key=("namespace", "slice", "ip", "port", "protocol", "port_name"),
)

TABLES: dict[str, Table] = {
    t.name: t for t in (FLOWS, CONNECTIONS, DNS, HTTP, GO_SPAWNS, TLS, WIRE_TRACE_CONTEXT, K8S_PODS, K8S_SERVICES, K8S_NODES, K8S_ENDPOINTS)
}

# --- manifest ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ManifestField:
    path: str
    type: str
    doc: str
    required: bool = True


MANIFEST: tuple[ManifestField, ...] = (
    ManifestField("format", "string", f"Format version; this reader reads exactly {FORMAT!r}."),
    ManifestField("tool", "object", "`name` and `version` of the program that wrote the tape."),
    ManifestField("created_ns", "int", "Wall-clock time the tape was created, ns since the Unix epoch (UTC)."),
    ManifestField("updated_ns", "int", "Wall-clock time the manifest was last rewritten."),
    ManifestField("complete", "bool", "True once the writer closed cleanly; false while recording or after a crash."),
    ManifestField("window", "object", "`start_ns` and `end_ns`: the capture window (null end while recording)."),
    ManifestField("nodes", "object", "Per node: `clock` (`realtime_ns`, `monotonic_ns`, `offset_ns` = realtime - monotonic sampled at start), `window`, "
                  "`host`: `hostname`, `kernel` and, from the live recorder (absent in older tapes), `addresses` (the host's own addresses in its root "
                  "network namespace: `ip`, `iface`), `namespace_addresses` (the addresses of its other network namespaces, containers' and `ip netns`', "
                  "loopback left out: `ip`, `iface`, `netns` inode), `etc_hosts` (/etc/hosts at record time: `ip`, `names`) and `cgroups` (per cgroup v2 id seen in "
                  "`connections`: `path`, `runtime` docker/podman/containerd/cri-o/lxc/machine/systemd, `container` name or 12-character id, `unit`): "
                  "the names of endpoints outside Kubernetes."),
    ManifestField("probes", "object", "Per probe name: its settings (interval, interfaces, ...).", False),
    ManifestField("settings", "object", "Writer and recorder settings (compression, rotation, redaction...).", False),
    ManifestField("redaction", "object", "What was redacted: `query_strings`, `header_allow_list`, `bodies`.", False),
    ManifestField("lost", "object", "Per node, counters of data lost or skipped: name -> count (kernel drops, failed inserts, malformed input...).", False),
    ManifestField("gaps", "array", "Intervals during which a source was blind: objects with `source`, `node`, `start_ns`, `end_ns`, `reason`.", False),
    ManifestField("tables", "object", "Per table: `rows` and `parts` totals over the files listed."),
    ManifestField("files", "object", "Per part path (relative to the tape): `table`, `node`, `rows`, `bytes`, `sha256`, `ts_min_ns`, `ts_max_ns`."),
    ManifestField("extra", "object", "Free-form metadata of producers (synth ground truth pointers, import sources).", False),
)


def table(name: str) -> Table:
    """Return the table declaration named `name` (KeyError naming the known tables)."""
    try:
        return TABLES[name]
    except KeyError:
        raise KeyError(f"unknown table {name!r} (known: {', '.join(TABLES)})") from None


def _type_text(t: pa.DataType) -> str:
    return str(t).replace("timestamp[ns, tz=UTC]", "timestamp[ns, UTC]")


def markdown(tables: Iterable[Table] | None = None) -> str:
    """The schema reference as Markdown (written to docs/schema.md)."""
    out = [
        "# flowtape tape schema",
        "",
        f"Generated from `flowtape/schema.py` by `flowtape schema --markdown`; do not edit. Format `{FORMAT}`.",
        "",
        "A tape is a folder: `manifest.json` plus `<table>/node=<node>/part-<seq>.parquet` (Hive-partitioned, zstd).",
        "`node` is the partition key and is not stored inside part files. Nullable columns are marked `null?`.",
        "",
    ]
    for t in tables or TABLES.values():
        out += [f"## {t.name}", "", t.doc, "", "| column | type | null? | meaning |", "|---|---|---|---|"]
        for c in t.columns:
            out.append(f"| `{c.name}` | `{_type_text(c.type)}` | {'yes' if c.nullable else 'no'} | {c.doc} |")
        out.append("")
    out += ["## manifest.json", "", "| key | type | required | meaning |", "|---|---|---|---|"]
    for m in MANIFEST:
        out.append(f"| `{m.path}` | {m.type} | {'yes' if m.required else 'no'} | {m.doc} |")
    out.append("")
    return "\n".join(out)
