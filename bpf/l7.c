/* L7 payload prefixes for flowtape's `dns`, `http` and `tls` tables.
 *
 * Stable ABI only (see DESIGN.md): struct __sk_buff fields and packet bytes (TC, tcx links),
 * tracepoint arguments (sock:sock_{send,recv}_length) and uprobe arguments (OpenSSL's
 * SSL_read/SSL_write and their _ex forms). No kernel struct is read by offset.
 *
 * The kernel selects, user space decodes (capture/l7.py hands the bytes to the same decoders
 * the pcap importer uses):
 *  - DNS: every UDP datagram from or to port 53 (one datagram is one message: its first
 *    packet), every TCP segment with payload from or to port 53; first 512 bytes.
 *  - HTTP/1.x and h2c: a TCP flow whose payload starts with a request method or the HTTP/2
 *    preface ("PRI ") is followed (both
 *    directions, in a map); every payload segment of a followed flow is sent, cut to 2048
 *    bytes, with its length and sequence number, so user space orders segments, skips
 *    retransmissions and knows the size of what it did not see (bodies). FIN and RST of a
 *    followed flow are sent so user space can end the connection. When user space has parsed
 *    a head announcing a long body (Content-Length), it writes where that body ends into the
 *    direction's map entry (skip_end) and the segments wholly inside the body are not sent:
 *    a 200 MB download is a handful of events instead of ~65k (which overflowed the ring).
 *  - TLS: a client segment starting with a handshake record holding a ClientHello
 *    (16 03 xx .. .. 01): its first 2 KB, and the next client segments while the hello
 *    record is not complete (up to 2 KB in all).
 *  - HTTPS plaintext (FT_HAVE_SSL): uprobes on SSL_write/SSL_read (+ _ex) in libssl. At entry
 *    the thread's call is remembered; while it runs, the socket it reads or writes shows up
 *    in sock:sock_{send,recv}_length on the same thread (its `sk` is the skaddr the
 *    connections probe follows). At return the first 512 bytes of the plaintext are sent
 *    with that skaddr; SSL* -> skaddr is cached for calls that do no socket I/O (data
 *    already buffered inside OpenSSL). Streams that start with the HTTP/2 preface are sent
 *    whole (up to 16 KiB a call, in 2 KiB records): HTTP/2 needs every frame header.
 *  - HTTPS plaintext of Go programs (FT_HAVE_GOTLS): uprobes on crypto/tls.(*Conn).Write and
 *    Read at entry and at each RET (see the section's comment); the same events and socket join.
 *
 * Packets are taken once per node with the same rule as bpf/flows.c: at ingress of a
 * covered interface (not loopback, not a bridge), or at egress when the packet did not
 * enter through a covered interface. Event records are variable-length (header + cap_len
 * bytes); records the ring buffer has no room for are counted (FT_L7_CTR_RINGBUF_FULL).
 */
#include <uapi/linux/ptrace.h>   /* struct pt_regs for the uprobes */
#include "events.h"

#define FT_TCP_FIN 0x01
#define FT_TCP_RST 0x04
#define FT_L7_HTTP_CAP 2048  /* a whole segment at MTU 1500: a head may start anywhere in a segment after a body */
#define FT_L7_DNS_CAP 512
#define FT_L7_SSL_CAP 512
#define FT_L7_RB_NO_WAKEUP 1  /* BPF_RB_NO_WAKEUP */
#define FT_RB_AVAIL_DATA 0    /* BPF_RB_AVAIL_DATA: bytes written and not yet read */
#define FT_L7_SHED_ABOVE (FT_L7_RINGBUF_PAGES * 4096 / 2)
#define FT_L7_HDR_LEN __builtin_offsetof(struct l7_event, data)

BPF_RINGBUF_OUTPUT(ft_l7_events, FT_L7_RINGBUF_PAGES);   /* keep it the first map declared: see FT_L7_EVENTS_MAP */
/* bcc turns map.method() calls into helper calls on the map's fd, but has no ringbuf_query();
 * bpf_pseudo_fd(1, -1) is the fd bcc gives the first map declared in this file. Were it another
 * map, the verifier would refuse to load the program (ringbuf_query takes a ring buffer only). */
#define FT_L7_EVENTS_MAP ((void *)bpf_pseudo_fd(1, -1))
BPF_PERCPU_ARRAY(ft_l7_scratch, struct l7_event, 1);
BPF_PERCPU_ARRAY(ft_l7_ctr, u64, FT_L7_CTR_N);
BPF_TABLE("lru_hash", struct l7_flow_key, struct l7_flow, ft_l7_flows, FT_L7_FLOW_ENTRIES);
BPF_HASH(ft_l7_ifaces, u32, struct iface_cfg, 4096);

static __always_inline void l7_bump(u32 which) {
    u64 *c = ft_l7_ctr.lookup(&which);
    if (c)
        *c += 1;   /* per-CPU: no other writer */
}

static __always_inline void l7_submit(struct l7_event *ev) {
    u32 cap = ev->cap_len;
    asm volatile("" : "+r"(cap));
    cap &= (FT_L7_DATA_MAX * 2 - 1);   /* cap_len <= FT_L7_DATA_MAX: bounds for the verifier */
    if (cap > FT_L7_DATA_MAX)
        cap = FT_L7_DATA_MAX;
    /* No wakeup per record: user space drains the ring on its own clock, a batch at a time
     * (a wakeup per record cost a context switch per HTTP segment). */
    if (ft_l7_events.ringbuf_output(ev, FT_L7_HDR_LEN + cap, FT_L7_RB_NO_WAKEUP) != 0)
        l7_bump(FT_L7_CTR_RINGBUF_FULL);
}

static __always_inline struct l7_event *l7_scratch(void) {
    u32 zero = 0;
    return ft_l7_scratch.lookup(&zero);
}

/* Copy `want` payload bytes at `off` into ev->data (want <= limit <= FT_L7_DATA_MAX). */
static __always_inline void l7_copy(struct __sk_buff *skb, struct l7_event *ev, u32 off, u32 want, u32 limit) {
    if (want > limit)
        want = limit;
    if (want > FT_L7_DATA_MAX)
        want = FT_L7_DATA_MAX;
    ev->cap_len = 0;
    if (want == 0)
        return;
    /* The verifier needs the size in [1, FT_L7_DATA_MAX] in the very register passed; the
     * empty asm keeps the compiler from folding the mask into the comparisons above. */
    asm volatile("" : "+r"(want));
    want = ((want - 1) & (FT_L7_DATA_MAX - 1)) + 1;
    if (bpf_skb_load_bytes(skb, off, ev->data, want) == 0)
        ev->cap_len = want;
}

/* SSL events come from a process, not a packet: the packet fields are zero (the ring's
 * reserved memory is not). */
static __always_inline void no_packet_fields(struct l7_event *ev) {
    ev->tid = (u32)bpf_get_current_pid_tgid();
    ev->seq = 0;
    ev->family = 0;
    ev->sport = 0;
    ev->dport = 0;
    ev->tcp_flags = 0;
    ev->from_client = 0;
}

static __always_inline int is_method(const u8 *p) {
    /* the request methods of RFC 9110 and PATCH; "PRI " starts the HTTP/2 client preface (h2c with
     * prior knowledge): followed the same way, decoded as HTTP/2 in user space */
    if (p[0] == 'G' && p[1] == 'E' && p[2] == 'T' && p[3] == ' ') return 1;
    if (p[0] == 'P' && p[1] == 'O' && p[2] == 'S' && p[3] == 'T') return 1;
    if (p[0] == 'P' && p[1] == 'U' && p[2] == 'T' && p[3] == ' ') return 1;
    if (p[0] == 'H' && p[1] == 'E' && p[2] == 'A' && p[3] == 'D') return 1;
    if (p[0] == 'D' && p[1] == 'E' && p[2] == 'L' && p[3] == 'E') return 1;
    if (p[0] == 'O' && p[1] == 'P' && p[2] == 'T' && p[3] == 'I') return 1;
    if (p[0] == 'P' && p[1] == 'A' && p[2] == 'T' && p[3] == 'C') return 1;
    if (p[0] == 'C' && p[1] == 'O' && p[2] == 'N' && p[3] == 'N') return 1;
    if (p[0] == 'T' && p[1] == 'R' && p[2] == 'A' && p[3] == 'C') return 1;
    if (p[0] == 'P' && p[1] == 'R' && p[2] == 'I' && p[3] == ' ') return 1;
    return 0;
}

static __always_inline struct iface_cfg *l7_iface(u32 ifindex) {
    return ft_l7_ifaces.lookup(&ifindex);
}

#ifdef FT_HAVE_WIRE_TRACE
/* Trace context carried below HTTP, read only (nothing is written to the packet):
 *  - IPv4 option type 136, length 20 (OBI/Beyla's TC tracer): a 16-byte trace id and 2 bytes of
 *    padding; its span id is the packet's TCP sequence and acknowledgement numbers, as OBI makes it
 *    (populate_span_id_from_tcp_info: seq then ack, each a u32 in host order, little-endian here);
 *  - TCP option kind 25, length 26: a 16-byte trace id and an 8-byte span id.
 * Only packets whose headers are long enough to hold one are scanned (an IPv4 header over 40
 * bytes; TCP options of 26 bytes or more: timestamps alone are 12), so the common packet costs two
 * comparisons. An event goes out when a flow's direction shows a context for the first time or
 * a different one (the trace id for the IPv4 option, whose span id moves with every packet; trace
 * and span id for the TCP option). */
struct wire_seen {
    u8 id[24];             /* trace id, then span id (zero for the IPv4 option: not compared) */
    u8 source;
    u8 _pad0[7];
};
BPF_TABLE("lru_hash", struct l7_flow_key, struct wire_seen, ft_wire_seen, FT_L7_FLOW_ENTRIES);

#define FT_WIRE_OPT_MAX 40   /* options of an IPv4 or TCP header: at most 40 bytes */

/* Offset of option `want` (total length `want_len`) in opts[0:n], or -1. */
static __always_inline int find_option(const u8 *opts, u32 n, u8 want, u8 want_len) {
    u32 i = 0;
#pragma unroll
    for (int step = 0; step < 20; step++) {   /* 20 options at least 2 bytes long fill 40 */
        if (i + 1 >= n || i + 1 >= FT_WIRE_OPT_MAX)
            return -1;
        u8 kind = opts[i & 63];
        if (kind == 0)
            return -1;     /* end of options */
        if (kind == 1) {   /* NOP */
            i += 1;
            continue;
        }
        u8 len = opts[(i + 1) & 63];
        if (len < 2)
            return -1;     /* malformed */
        if (kind == want && len == want_len && i + len <= n)
            return (int)i;
        i += len;
    }
    return -1;
}

static __always_inline void wire_trace(struct __sk_buff *skb, struct l7_flow_key *key, u32 opt_off, u32 opt_len,
                                       u8 source, u32 seq, u32 ack) {
    u8 opts[64] = {};   /* 64: masked indexes stay inside it */
    if (opt_len > FT_WIRE_OPT_MAX)
        opt_len = FT_WIRE_OPT_MAX;
    if (opt_len < 20)
        return;
    u32 want = opt_len;   /* exactly the options: the packet may end right after the headers */
    asm volatile("" : "+r"(want));
    want = ((want - 1) & 63) + 1;   /* in [1, 64] (the buffer) for the verifier */
    if (bpf_skb_load_bytes(skb, opt_off, opts, want) != 0)
        return;
    int at = source == FT_L7_WIRE_IP_OPTION ? find_option(opts, opt_len, 136, 20) : find_option(opts, opt_len, 25, 26);
    if (at < 0)
        return;
    struct wire_seen seen = {};
    u32 a = (u32)at & 31;   /* an option of 20 bytes starts at 20 at most in 40 (26 bytes: 14) */
#pragma unroll
    for (int i = 0; i < 16; i++)
        seen.id[i] = opts[a + 2 + i];
    if (source == FT_L7_WIRE_TCP_OPTION) {
#pragma unroll
        for (int i = 0; i < 8; i++)
            seen.id[16 + i] = opts[a + 18 + i];
    }
    seen.source = source;
    struct wire_seen *last = ft_wire_seen.lookup(key);
    if (last && last->source == source) {
        /* compared as three words (a memcmp would become a call the kernel cannot link) */
        u64 a0, a1, a2, b0, b1, b2;
        __builtin_memcpy(&a0, last->id, 8); __builtin_memcpy(&a1, last->id + 8, 8); __builtin_memcpy(&a2, last->id + 16, 8);
        __builtin_memcpy(&b0, seen.id, 8); __builtin_memcpy(&b1, seen.id + 8, 8); __builtin_memcpy(&b2, seen.id + 16, 8);
        if (a0 == b0 && a1 == b1 && a2 == b2)
            return;
    }
    if (ft_wire_seen.update(key, &seen) != 0)
        l7_bump(FT_L7_CTR_WIRE_FULL);
    struct l7_event *ev = l7_scratch();
    if (!ev)
        return;
    ev->ts_ns = bpf_ktime_get_ns();
    ev->kind = FT_L7_WIRE_TRACE;
    ev->skaddr = 0; ev->ssl = 0; ev->pid = 0; ev->tid = 0; ev->length = 0;
    ev->family = key->family;
    __builtin_memcpy(ev->saddr, key->saddr, 16);
    __builtin_memcpy(ev->daddr, key->daddr, 16);
    ev->sport = key->sport;
    ev->dport = key->dport;
    ev->seq = seq;
    ev->tcp_flags = source;
    ev->from_client = 0;
    __builtin_memcpy(ev->data, seen.id, 24);
    if (source == FT_L7_WIRE_IP_OPTION) {   /* OBI's span id: seq then ack, host-order u32s */
        __builtin_memcpy(ev->data + 16, &seq, 4);
        __builtin_memcpy(ev->data + 20, &ack, 4);
    }
    ev->cap_len = 24;
    l7_submit(ev);
}
#endif

static __always_inline int l7_packet(struct __sk_buff *skb, u8 direction) {
    struct iface_cfg *cfg = l7_iface(skb->ifindex);
    if (!cfg || !FT_TAKES(cfg, direction, skb, l7_iface))
        return FT_TCX_NEXT;

    struct ft_packet pkt;
    __builtin_memset(&pkt, 0, sizeof(pkt));
    int st = ft_parse_packet(skb, cfg->l2_len, &pkt);
    if (st == FT_PKT_L3_TRUNCATED)
        l7_bump(FT_L7_CTR_TRUNCATED);
    if (st != FT_PKT_OK || !pkt.first_fragment)
        return FT_TCX_NEXT;   /* not IP, unreadable, or a later fragment (no L4 header) */
    struct l7_flow_key key;
    __builtin_memset(&key, 0, sizeof(key));
    key.family = pkt.family;
    __builtin_memcpy(key.saddr, pkt.saddr, 16);
    __builtin_memcpy(key.daddr, pkt.daddr, 16);
    u32 off = pkt.off, ip_hlen = pkt.ip_hlen, ip_len = pkt.ip_len;
    u8 l4proto = pkt.l4proto;
    if (l4proto != 6 && l4proto != 17)
        return FT_TCX_NEXT;
    u32 l4off = off + ip_hlen;
    u32 l3_end = off + ip_len;   /* frames can be padded: payload ends at the IP length */
    u32 segs = skb->gso_segs;
    if (segs > 1 || ip_len == 0)
        l3_end = skb->len;       /* a GSO super-packet: its IP length is not the wire one */

    if (l4proto == 17) {
        u8 udp[4];
        if (hdr(skb, l4off, udp, 4) != 0)
            return FT_TCX_NEXT;
        u16 sport = ((u16)udp[0] << 8) | udp[1], dport = ((u16)udp[2] << 8) | udp[3];
        if (sport != 53 && dport != 53)
            return FT_TCX_NEXT;
        u32 poff = l4off + 8;
        if (l3_end <= poff)
            return FT_TCX_NEXT;
        struct l7_event *ev = l7_scratch();
        if (!ev)
            return FT_TCX_NEXT;
        ev->ts_ns = bpf_ktime_get_ns();
        ev->kind = FT_L7_DNS_UDP;
        ev->skaddr = 0; ev->ssl = 0; ev->seq = 0; ev->pid = 0; ev->tcp_flags = 0; ev->from_client = 0; ev->tid = 0;
        ev->family = key.family;
        __builtin_memcpy(ev->saddr, key.saddr, 16);
        __builtin_memcpy(ev->daddr, key.daddr, 16);
        ev->sport = sport;
        ev->dport = dport;
        ev->length = l3_end - poff;
        l7_copy(skb, ev, poff, l3_end - poff, FT_L7_DNS_CAP);
        l7_submit(ev);
        return FT_TCX_NEXT;
    }

    u8 th[14];   /* ports, seq, ack, data offset, flags */
    if (hdr(skb, l4off, th, 14) != 0) {
        l7_bump(FT_L7_CTR_TRUNCATED);
        return FT_TCX_NEXT;
    }
    key.sport = ((u16)th[0] << 8) | th[1];
    key.dport = ((u16)th[2] << 8) | th[3];
    u32 seq = ((u32)th[4] << 24) | ((u32)th[5] << 16) | ((u32)th[6] << 8) | th[7];
    u32 doff = (th[12] >> 4) * 4;
    u8 flags = th[13];
#ifdef FT_HAVE_WIRE_TRACE
    if ((ip_hlen >= 20 + 20 && pkt.family == 4) || doff >= 20 + 26) {
        u32 ack = ((u32)th[8] << 24) | ((u32)th[9] << 16) | ((u32)th[10] << 8) | th[11];
        if (ip_hlen >= 20 + 20 && pkt.family == 4)
            wire_trace(skb, &key, off + 20, ip_hlen - 20, FT_L7_WIRE_IP_OPTION, seq, ack);
        if (doff >= 20 + 26)
            wire_trace(skb, &key, l4off + 20, doff - 20, FT_L7_WIRE_TCP_OPTION, seq, ack);
    }
#endif
    u32 poff = l4off + doff;
    u32 paylen = l3_end > poff ? l3_end - poff : 0;
    u8 end = flags & (FT_TCP_FIN | FT_TCP_RST);
    if (paylen == 0 && !end)
        return FT_TCX_NEXT;   /* pure ACKs and SYNs: the common case, nothing to look at */

    u8 kind = 0, from_client = 0;
    u32 limit = 0;
    int dns = key.sport == 53 || key.dport == 53;
    struct l7_flow *fl = dns ? 0 : ft_l7_flows.lookup(&key);
    if (dns) {
        kind = FT_L7_DNS_TCP;
        from_client = key.dport == 53;
        limit = FT_L7_DNS_CAP;
    } else if (fl) {
        kind = fl->kind;
        from_client = fl->from_client;
        if (kind == FT_L7_TLS_HELLO) {
            limit = fl->budget;
            if (end || limit == 0 || paylen >= limit) {
                ft_l7_flows.delete(&key);   /* the hello is complete with this segment */
            } else {
                fl->budget = limit - paylen;
            }
            if (end)
                return FT_TCX_NEXT;
        } else {
            limit = FT_L7_HTTP_CAP;
            if (fl->skipping && !end) {
                /* User space parsed a head whose body is long (Content-Length) and told us
                 * where it ends: segments wholly inside it carry nothing it needs. */
                u32 ahead = fl->skip_end - seq;   /* modulo 2^32 */
                if (ahead < 0x80000000u && ahead > paylen)
                    return FT_TCX_NEXT;
                fl->skipping = 0;   /* this segment reaches the body's end: sent (it ends the message; a head may follow) */
            }
            if (paylen > 0 && bpf_ringbuf_query(FT_L7_EVENTS_MAP, FT_RB_AVAIL_DATA) > FT_L7_SHED_ABOVE) {
                /* Under pressure (user space has not yet told us to skip a long body, or is
                 * behind), shed body bytes before whole events are lost: a segment that does not
                 * start a head goes out with its length and sequence number only. */
                u8 h[4] = {};
                if (hdr(skb, poff, h, 4) == 0 && paylen >= 4 &&
                    !(from_client ? is_method(h) : (h[0] == 'H' && h[1] == 'T' && h[2] == 'T' && h[3] == 'P'))) {
                    limit = 0;
                    l7_bump(FT_L7_CTR_SHED);
                }
            }
            if (flags & FT_TCP_RST) {
                ft_l7_flows.delete(&key);
                struct l7_flow_key rev = key;
                __builtin_memcpy(rev.saddr, key.daddr, 16);
                __builtin_memcpy(rev.daddr, key.saddr, 16);
                rev.sport = key.dport;
                rev.dport = key.sport;
                ft_l7_flows.delete(&rev);
            }
        }
    } else {
        if (paylen == 0)
            return FT_TCX_NEXT;
        u8 head[6] = {};
        if (bpf_skb_load_bytes(skb, poff, head, paylen >= 6 ? 6 : 4) != 0)
            return FT_TCX_NEXT;
        if (paylen >= 6 && head[0] == 0x16 && head[1] == 0x03 && head[5] == 0x01) {
            kind = FT_L7_TLS_HELLO;
            from_client = 1;
            u32 need = 5 + (((u32)head[3] << 8) | head[4]);
            if (need > FT_L7_DATA_MAX)
                need = FT_L7_DATA_MAX;
            limit = need;
            if (paylen < need) {
                struct l7_flow nf = {};
                nf.kind = FT_L7_TLS_HELLO;
                nf.from_client = 1;
                nf.budget = need - paylen;
                if (ft_l7_flows.update(&key, &nf) != 0)
                    l7_bump(FT_L7_CTR_TRACK_FULL);
            }
        } else if (paylen >= 4 && is_method(head)) {
            kind = FT_L7_HTTP;
            from_client = 1;
            limit = FT_L7_HTTP_CAP;
            struct l7_flow nf = {};
            nf.kind = FT_L7_HTTP;
            nf.from_client = 1;
            struct l7_flow_key rev = key;
            __builtin_memcpy(rev.saddr, key.daddr, 16);
            __builtin_memcpy(rev.daddr, key.saddr, 16);
            rev.sport = key.dport;
            rev.dport = key.sport;
            if (ft_l7_flows.update(&key, &nf) != 0)
                l7_bump(FT_L7_CTR_TRACK_FULL);
            nf.from_client = 0;
            if (ft_l7_flows.update(&rev, &nf) != 0)
                l7_bump(FT_L7_CTR_TRACK_FULL);
        } else {
            return FT_TCX_NEXT;
        }
    }

    struct l7_event *ev = l7_scratch();
    if (!ev)
        return FT_TCX_NEXT;
    ev->ts_ns = bpf_ktime_get_ns();
    ev->skaddr = 0; ev->ssl = 0; ev->pid = 0; ev->tid = 0;
    ev->family = key.family;
    __builtin_memcpy(ev->saddr, key.saddr, 16);
    __builtin_memcpy(ev->daddr, key.daddr, 16);
    ev->sport = key.sport;
    ev->dport = key.dport;
    ev->seq = seq;
    ev->tcp_flags = flags;
    ev->from_client = from_client;
    ev->length = paylen;
    ev->cap_len = 0;
    if (paylen > 0) {
        ev->kind = kind;
        l7_copy(skb, ev, poff, paylen, limit);
        l7_submit(ev);
    }
    if (end && kind != FT_L7_TLS_HELLO) {
        ev->kind = FT_L7_TCP_END;
        ev->cap_len = 0;
        ev->length = 0;
        if (kind == FT_L7_DNS_TCP)
            ev->from_client = from_client;
        l7_submit(ev);
    }
    return FT_TCX_NEXT;
}

int ft_l7_ingress(struct __sk_buff *skb) { return l7_packet(skb, FT_DIR_INGRESS); }
/* (l7_packet calls wire_trace, declared before it) */
int ft_l7_egress(struct __sk_buff *skb) { return l7_packet(skb, FT_DIR_EGRESS); }

/* ---- HTTPS plaintext: OpenSSL and Go crypto/tls uprobes ------------------------------ */
#if defined(FT_HAVE_SSL) || defined(FT_HAVE_GOTLS)
struct ssl_key {
    u64 ssl;       /* OpenSSL's SSL* or Go's *tls.Conn */
    u32 tgid;
    u32 _pad0;
};
/* Plaintext calls in progress on the node (entered, not returned). sock:sock_*_length runs on
 * every send and receive of every socket; while no call is in progress it has nothing to do and
 * returns after this one inlined lookup instead of a hash lookup. A call whose return is never
 * seen (its process killed inside it) leaves it above 0: slower, never wrong. */
BPF_ARRAY(ft_ssl_inflight, s64, 1);

static __always_inline void ssl_inflight(s64 delta) {
    u32 zero = 0;
    s64 *n = ft_ssl_inflight.lookup(&zero);
    if (n)
        __sync_fetch_and_add(n, delta);
}
BPF_TABLE("lru_hash", struct ssl_key, u64, ft_ssl_socks, FT_SSL_SOCK_ENTRIES);  /* SSL* or Conn -> skaddr */
/* Streams that began with the HTTP/2 client preface (written by a client, read by a server).
 * Their calls are sent whole, in FT_L7_DATA_MAX chunks up to FT_L7_SSL_H2_CHUNKS of them, not as
 * a 512-byte prefix: one TLS record holds the frames of many streams, and a frame header past a
 * prefix would lose the frame boundaries (and with them every later stream). */
#define FT_L7_SSL_H2_CHUNKS 8
BPF_TABLE("lru_hash", struct ssl_key, u8, ft_ssl_h2, FT_SSL_SOCK_ENTRIES);

/* n plaintext bytes at buf, read or written by connection `conn` of process tgid: sent with the
 * socket seen during the call (`sk`, which then becomes the connection's), else the one the
 * connection last used. */
static __always_inline int plaintext_event(u8 kind, u64 tid, u64 conn, u64 sk, u64 buf, u64 n) {
    if (n == 0)
        return 0;
    struct ssl_key key = {};
    key.ssl = conn;
    key.tgid = tid >> 32;
    if (sk) {
        ft_ssl_socks.update(&key, &sk);
    } else {
        u64 *known = ft_ssl_socks.lookup(&key);
        if (known)
            sk = *known;
        else
            l7_bump(FT_L7_CTR_SSL_NO_SOCKET);
    }
    struct l7_event *ev = l7_scratch();
    if (!ev)
        return 0;
    ev->ts_ns = bpf_ktime_get_ns();
    ev->kind = kind;
    ev->skaddr = sk;
    ev->ssl = conn;
    ev->pid = tid >> 32;
    ev->length = n > 0xffffffff ? 0xffffffff : (u32)n;
    no_packet_fields(ev);
    bpf_get_current_comm(&ev->comm, sizeof(ev->comm));
    int h2 = ft_ssl_h2.lookup(&key) != 0;
    if (!h2 && n >= 24) {
        u8 head[4] = {};
        if (bpf_probe_read_user(head, 4, (void *)buf) == 0 && head[0] == 'P' && head[1] == 'R' && head[2] == 'I' && head[3] == ' ') {
            u8 one = 1;
            ft_ssl_h2.update(&key, &one);
            h2 = 1;
        }
    }
    if (h2) {
        /* consecutive chunks of the call's plaintext, each its own record; the last one's length
         * covers what is past the chunks (user space counts it as bytes not captured) */
        for (int i = 0; i < FT_L7_SSL_H2_CHUNKS; i++) {
            u64 off = (u64)i * FT_L7_DATA_MAX;
            if (off >= n)
                break;
            u64 rest = n - off;
            u32 part = rest > FT_L7_DATA_MAX ? FT_L7_DATA_MAX : (u32)rest;
            ev->length = i == FT_L7_SSL_H2_CHUNKS - 1 ? (rest > 0xffffffff ? 0xffffffff : (u32)rest) : part;
            ev->cap_len = 0;
            asm volatile("" : "+r"(part));
            part = ((part - 1) & (FT_L7_DATA_MAX - 1)) + 1;
            if (bpf_probe_read_user(ev->data, part, (void *)(buf + off)) == 0)
                ev->cap_len = part;
            l7_submit(ev);
        }
        return 0;
    }
    u32 want = n > FT_L7_SSL_CAP ? FT_L7_SSL_CAP : (u32)n;
    ev->cap_len = 0;
    if (want > 0) {
        asm volatile("" : "+r"(want));
        want = ((want - 1) & (FT_L7_SSL_CAP - 1)) + 1;
        if (bpf_probe_read_user(ev->data, want, (void *)buf) == 0)
            ev->cap_len = want;
    }
    l7_submit(ev);
    return 0;
}
#endif

#ifdef FT_HAVE_SSL
/* Processes whose OpenSSL uses memory BIOs (Node.js): their socket I/O happens outside SSL_read,
 * in the event loop, right before it on the same thread. For the pids user space registers here,
 * the last socket each thread received from is kept, and an SSL_read that saw no socket takes it. */
BPF_ARRAY(ft_bio_on, s64, 1);                                 /* how many pids are registered */
BPF_HASH(ft_bio_pids, u32, u8, 4096);
BPF_TABLE("lru_hash", u64, u64, ft_bio_rx, 16384);            /* thread id -> last socket received */

struct ssl_call {
    u64 ssl;
    u64 buf;
    u64 out_len;   /* _ex forms: size_t *written / *readbytes; 0 otherwise */
    u64 sk;        /* socket seen in sock:sock_*_length during the call */
};
BPF_HASH(ft_ssl_calls, u64, struct ssl_call, 16384);                         /* thread id -> call */

static __always_inline int ssl_enter(struct pt_regs *ctx, int ex) {
    u64 tid = bpf_get_current_pid_tgid();
    struct ssl_call call = {};
    call.ssl = PT_REGS_PARM1(ctx);
    call.buf = PT_REGS_PARM2(ctx);
    call.out_len = ex ? PT_REGS_PARM4(ctx) : 0;
    if (ft_ssl_calls.insert(&tid, &call) == 0)
        ssl_inflight(1);
    else
        ft_ssl_calls.update(&tid, &call);   /* an unreturned call of this thread: replaced, counted once */
    return 0;
}

static __always_inline int ssl_return(struct pt_regs *ctx, u8 kind, int ex) {
    u64 tid = bpf_get_current_pid_tgid();
    struct ssl_call *call = ft_ssl_calls.lookup(&tid);
    if (!call)
        return 0;
    struct ssl_call c = *call;
    ft_ssl_calls.delete(&tid);
    ssl_inflight(-1);
    long ret = PT_REGS_RC(ctx);
    u64 n = 0;
    if (ex) {
        if ((int)ret != 1 || c.out_len == 0)
            return 0;
        if (bpf_probe_read_user(&n, sizeof(n), (void *)c.out_len) != 0)
            return 0;
    } else {
        if ((int)ret <= 0)
            return 0;
        n = (u32)(int)ret;
    }
    if (!c.sk && kind == FT_L7_SSL_READ) {
        u64 *rx = ft_bio_rx.lookup(&tid);
        if (rx)
            c.sk = *rx;
    }
    return plaintext_event(kind, tid, c.ssl, c.sk, c.buf, n);
}

int ft_ssl_write_enter(struct pt_regs *ctx) { return ssl_enter(ctx, 0); }
int ft_ssl_write_ex_enter(struct pt_regs *ctx) { return ssl_enter(ctx, 1); }
int ft_ssl_read_enter(struct pt_regs *ctx) { return ssl_enter(ctx, 0); }
int ft_ssl_read_ex_enter(struct pt_regs *ctx) { return ssl_enter(ctx, 1); }
int ft_ssl_write_return(struct pt_regs *ctx) { return ssl_return(ctx, FT_L7_SSL_WRITE, 0); }
int ft_ssl_write_ex_return(struct pt_regs *ctx) { return ssl_return(ctx, FT_L7_SSL_WRITE, 1); }
int ft_ssl_read_return(struct pt_regs *ctx) { return ssl_return(ctx, FT_L7_SSL_READ, 0); }
int ft_ssl_read_ex_return(struct pt_regs *ctx) { return ssl_return(ctx, FT_L7_SSL_READ, 1); }

/* SSL_free: forget the SSL*'s socket (the pointer will be reused for another connection) and
 * tell user space the stream ended. */
int ft_ssl_free_enter(struct pt_regs *ctx) {
    u64 tid = bpf_get_current_pid_tgid();
    struct ssl_key sk = {};
    sk.ssl = PT_REGS_PARM1(ctx);
    sk.tgid = tid >> 32;
    u64 *known = ft_ssl_socks.lookup(&sk);
    if (!known)
        return 0;   /* never did HTTP-visible I/O: nothing to end */
    struct l7_event *ev = l7_scratch();
    if (!ev)
        return 0;
    ev->ts_ns = bpf_ktime_get_ns();
    ev->kind = FT_L7_SSL_FREE;
    ev->skaddr = *known;
    ev->ssl = sk.ssl;
    ev->pid = sk.tgid;
    ev->length = 0;
    ev->cap_len = 0;
    no_packet_fields(ev);
    ft_ssl_socks.delete(&sk);
    ft_ssl_h2.delete(&sk);
    l7_submit(ev);
    return 0;
}
#endif

#ifdef FT_HAVE_GOTLS
/* Go crypto/tls.(*Conn).Read: a uprobe at the entry and one at each RET (found in user space by
 * disassembly; uretprobes break Go's movable stacks); Write: at its entry only (below). Go >= 1.17 register ABI: at entry
 * RAX = the *tls.Conn, RBX = the buffer, RCX = its length; at a RET RAX = the byte count; R14 = the
 * goroutine (g) throughout. A call is keyed by (tgid, g), not by thread: a Read that blocks parks
 * its goroutine, which may resume on another thread. The socket is the first one this call's
 * entry thread reads or writes after the entry (ft_go_threads: thread -> g): Go does the first
 * syscall of a Read or Write on the thread it entered on, before it could park. */
struct go_key {
    u64 g;
    u32 tgid;
    u32 _pad0;
};
struct go_call {
    u64 conn;
    u64 buf;
    u64 sk;        /* the first socket seen on the entry thread during the call */
    u64 tid;       /* the entry thread */
};
BPF_HASH(ft_go_calls, struct go_key, struct go_call, 16384);
BPF_HASH(ft_go_threads, u64, u64, 16384);   /* thread id -> g of the call that entered on it */
#ifdef FT_HAVE_GOROUTINES
/* (tgid, g) -> the socket of the goroutine's last turn (io_turn): the socket of a crypto/tls Read
 * that does no socket I/O itself, when the connection's socket is not known yet: net/http's server
 * reads a connection's first request from what its handshake (on the same goroutine) already
 * received when the client sent the request with its Finished message. */
BPF_TABLE("lru_hash", struct go_key, u64, ft_go_sock, 16384);
#endif

static __always_inline int go_enter(struct pt_regs *ctx) {
    u64 tid = bpf_get_current_pid_tgid();
    struct go_key k = {};
    k.g = ctx->r14;
    k.tgid = tid >> 32;
    struct go_call call = {};
    call.conn = ctx->ax;
    call.buf = ctx->bx;
    call.tid = tid;
    /* a second entry of the same call (after runtime.morestack grew the stack) replaces the first */
    if (ft_go_calls.insert(&k, &call) == 0)
        ssl_inflight(1);
    else
        ft_go_calls.update(&k, &call);
    ft_go_threads.update(&tid, &k.g);
    return 0;
}

static __always_inline int go_return(struct pt_regs *ctx, u8 kind) {
    u64 tid = bpf_get_current_pid_tgid();
    struct go_key k = {};
    k.g = ctx->r14;
    k.tgid = tid >> 32;
    struct go_call *call = ft_go_calls.lookup(&k);
    if (!call)
        return 0;
    struct go_call c = *call;
    ft_go_calls.delete(&k);
    ssl_inflight(-1);
    u64 *on = ft_go_threads.lookup(&c.tid);
    if (on && *on == k.g)
        ft_go_threads.delete(&c.tid);
    long n = (long)ctx->ax;
    if (n <= 0)
        return 0;
#ifdef FT_HAVE_GOROUTINES
    if (!c.sk) {   /* no socket I/O in the call: the connection's known socket, else the goroutine's last */
        struct ssl_key sk = {};
        sk.ssl = c.conn;
        sk.tgid = k.tgid;
        if (!ft_ssl_socks.lookup(&sk)) {
            u64 *last = ft_go_sock.lookup(&k);
            if (last)
                c.sk = *last;
        }
    }
#endif
    return plaintext_event(kind, tid, c.conn, c.sk, c.buf, (u64)n);
}

/* A Write is sent at its entry (RBX = the plaintext, RCX = its length), with the socket the
 * connection last used: sent at return, a request could follow its own response into the ring
 * when another goroutine reads the answer first (Go's HTTP/2 and HTTP/1 transports read and
 * write on separate goroutines), and the decoder would pair them wrong. A Write that fails is
 * still sent (its bytes were meant for the peer). */
int ft_go_write_enter(struct pt_regs *ctx) {
    return plaintext_event(FT_L7_SSL_WRITE, bpf_get_current_pid_tgid(), ctx->ax, 0, ctx->bx, ctx->cx);
}
int ft_go_read_enter(struct pt_regs *ctx) { return go_enter(ctx); }
int ft_go_read_return(struct pt_regs *ctx) { return go_return(ctx, FT_L7_SSL_READ); }
#endif

#ifdef FT_HAVE_GOROUTINES
/* Goroutines of Go programs: http.goroutine and go_spawns (needs FT_HAVE_GOTLS and FT_HAVE_TURNS).
 * Registers only, no struct offset (DESIGN.md): R14 is the running goroutine's g in Go code; a Go
 * goroutine's identity is that pointer (reused after the goroutine exits: go_spawns is time-aware).
 *  - runtime.newproc1(fn, callergp *g, callerpc) *g runs on the system stack (R14 = g0 there).
 *    One uprobe per `go` statement where the binary allows it (capture.live.gobin.spawn_site): at
 *    the instruction after `CALL runtime.newproc1` in runtime.newproc.func1, RAX is the new g and
 *    the creator is still in the slot newproc1's prologue spilled RBX to (RSP + a per-binary offset,
 *    ft_go_spawn_slots, keyed by the probed address). Otherwise (the pattern not found) two: RBX at
 *    newproc1's entry is the creator, RAX at each RET the new g, on one thread (the system stack does
 *    not switch threads). A spawn is not sent: it is kept in ft_go_parents (child -> parent, per
 *    process), and a goroutine's links up to FT_GO_SPAWN_LINKS ancestors are sent (FT_L7_GO_SPAWN)
 *    when it first does a socket turn (io_turn), each link once: a request-serving chain links, the
 *    many goroutines that never do HTTP cost no row. FT_GO_SPAWN_LINKS 0 sends every spawn at once
 *    (the reference). The first spawn in a process marks it as Go (ft_go_procs): Go starts
 *    goroutines before main, so a process started after the uprobes were attached is marked before
 *    any socket I/O, one running before at its next `go` statement.
 *  - The goroutine of a socket turn (io_turn): the user R14 saved at the syscall's entry
 *    (bpf_task_pt_regs of the current task: the same registers a uprobe reads), in Go processes
 *    only (R14 means nothing in other programs). Go's syscall path keeps g in R14 down to the
 *    SYSCALL instruction (runtime/internal/syscall.Syscall6 does not touch it).
 *  - net/http's client writes a request from its connection's writeLoop goroutine, not the
 *    caller's: the caller hands it over a channel in (*persistConn).roundTrip. So
 *    (*persistConn).roundTrip's entry (RAX = the *persistConn, R14 = the caller) and
 *    (*persistConn).writeLoop's entry and RETs (RAX = the *persistConn, R14 = the writeLoop
 *    goroutine) are probed, and a turn on a writeLoop goroutine is given the goroutine in
 *    roundTrip on its connection: the caller's (one request at a time on an HTTP/1 connection).
 * Pointers are kept with the time their process was marked (`epoch`): a pid reused by a new Go
 * process (whose heap addresses repeat) does not meet the old process's entries. */
struct go_ptr {
    u64 ptr;
    u64 epoch;    /* ft_go_procs' value for the process when it was stored */
};
BPF_HASH(ft_go_procs, u32, u64, 16384);                                    /* tgid -> epoch (mark time) */
BPF_HASH(ft_go_spawning, u64, u64, 16384);                                 /* thread -> creator g, inside newproc1 */
BPF_TABLE("lru_hash", struct go_key, struct go_ptr, ft_go_writers, 16384); /* (tgid, writeLoop g) -> its *persistConn */
BPF_TABLE("lru_hash", struct go_key, struct go_ptr, ft_go_callers, 16384); /* (tgid, *persistConn) -> the g in its roundTrip */

static __always_inline u64 go_epoch(u32 tgid, int mark) {
    u64 *e = ft_go_procs.lookup(&tgid);
    if (e)
        return *e;
    if (!mark)
        return 0;
    u64 now = bpf_ktime_get_ns();
    ft_go_procs.update(&tgid, &now);
    return now;
}

struct go_spawn {
    u64 parent;   /* the creator's g */
    u64 ts_ns;    /* when it was created */
    u64 epoch;    /* ft_go_procs' value for the process then */
    u64 sent;     /* this link was sent already */
};
BPF_TABLE("lru_hash", struct go_key, struct go_spawn, ft_go_parents, FT_GO_PARENT_ENTRIES); /* (tgid, child g) -> its spawn */
BPF_HASH(ft_go_spawn_slots, u64, s64, 1024);  /* spawn-site address -> creator slot, relative to RSP there */

static __always_inline void spawn_event(u32 tgid, u64 ts, u64 parent, u64 child) {
    struct l7_event *ev = l7_scratch();
    if (!ev)
        return;
    ev->ts_ns = ts;
    ev->kind = FT_L7_GO_SPAWN;
    ev->skaddr = 0;
    ev->ssl = 0;
    ev->pid = tgid;
    ev->length = 0;
    no_packet_fields(ev);
    __builtin_memcpy(ev->data, &parent, 8);
    __builtin_memcpy(ev->data + 8, &child, 8);
    ev->cap_len = 16;
    l7_submit(ev);
}

static __always_inline void go_spawned(u64 tid, u64 parent, u64 child) {
    if (!child)
        return;
    u32 tgid = tid >> 32;
    u64 epoch = go_epoch(tgid, 1);
    u64 now = bpf_ktime_get_ns();
#if FT_GO_SPAWN_LINKS == 0
    spawn_event(tgid, now, parent, child);
#else
    struct go_key k = {};
    k.g = child;
    k.tgid = tgid;
    struct go_spawn v = {};
    v.parent = parent;
    v.ts_ns = now;
    v.epoch = epoch;
    ft_go_parents.update(&k, &v);   /* a reused g: its new life replaces the old */
#endif
}

/* Goroutine g of process tgid did a socket turn: send its spawn and its ancestors' not sent yet. A
 * link older than it was, or of another process life, ends the walk (a g reused since). */
static __always_inline void go_lineage(u32 tgid, u64 g) {
#if FT_GO_SPAWN_LINKS > 0
    u64 epoch = go_epoch(tgid, 0);
    struct go_key k = {};
    k.g = g;
    k.tgid = tgid;
    u64 before = ~0ULL;
#pragma unroll
    for (int i = 0; i < FT_GO_SPAWN_LINKS; i++) {
        struct go_spawn *s = ft_go_parents.lookup(&k);
        if (!s || s->sent || s->epoch != epoch || s->ts_ns >= before)
            return;
        s->sent = 1;
        spawn_event(tgid, s->ts_ns, s->parent, k.g);
        before = s->ts_ns;
        k.g = s->parent;
    }
#endif
}

int ft_go_spawn_site(struct pt_regs *ctx) {
    u64 ip = ctx->ip;
    s64 *slot = ft_go_spawn_slots.lookup(&ip);
    if (!slot)
        return 0;
    u64 parent = 0;
    if (bpf_probe_read_user(&parent, sizeof(parent), (void *)(ctx->sp + *slot)) != 0)
        return 0;
    go_spawned(bpf_get_current_pid_tgid(), parent, ctx->ax);
    return 0;
}

int ft_go_newproc_enter(struct pt_regs *ctx) {
    u64 tid = bpf_get_current_pid_tgid();
    u64 parent = ctx->bx;
    ft_go_spawning.update(&tid, &parent);
    return 0;
}

int ft_go_newproc_return(struct pt_regs *ctx) {
    u64 tid = bpf_get_current_pid_tgid();
    u64 *parent = ft_go_spawning.lookup(&tid);
    if (!parent)
        return 0;
    u64 p = *parent;
    ft_go_spawning.delete(&tid);
    go_spawned(tid, p, ctx->ax);
    return 0;
}

int ft_go_roundtrip_enter(struct pt_regs *ctx) {
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct go_key k = {};
    k.g = ctx->ax;   /* the *persistConn, not a g: the key is a pointer within the process */
    k.tgid = tgid;
    struct go_ptr v = {};
    v.ptr = ctx->r14;
    v.epoch = go_epoch(tgid, 1);
    ft_go_callers.update(&k, &v);
    return 0;
}

int ft_go_writeloop_enter(struct pt_regs *ctx) {
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct go_key k = {};
    k.g = ctx->r14;
    k.tgid = tgid;
    struct go_ptr v = {};
    v.ptr = ctx->ax;
    v.epoch = go_epoch(tgid, 1);
    ft_go_writers.update(&k, &v);
    return 0;
}

int ft_go_writeloop_return(struct pt_regs *ctx) {
    struct go_key k = {};
    k.g = ctx->r14;   /* the g is reused by a later goroutine: it writes for no connection then */
    k.tgid = bpf_get_current_pid_tgid() >> 32;
    ft_go_writers.delete(&k);
    return 0;
}

/* The goroutine doing the current syscall (a turn of socket sk) in a Go process, the caller's for a
 * writeLoop; 0 when the process is not known as Go. The goroutine's own g is remembered with sk. */
static __always_inline u64 go_current_g(u32 tgid, u64 sk) {
    u64 epoch = go_epoch(tgid, 0);
    if (!epoch)
        return 0;
    struct task_struct *task = bpf_get_current_task_btf();
    struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(task);
    u64 g = 0;
    bpf_probe_read_kernel(&g, sizeof(g), &regs->r14);
    if (!g)
        return 0;
    struct go_key k = {};
    k.g = g;
    k.tgid = tgid;
    ft_go_sock.update(&k, &sk);
    struct go_ptr *w = ft_go_writers.lookup(&k);
    if (w && w->epoch == epoch) {
        struct go_key c = {};
        c.g = w->ptr;
        c.tgid = tgid;
        struct go_ptr *caller = ft_go_callers.lookup(&c);
        if (caller && caller->epoch == epoch && caller->ptr)
            return caller->ptr;
    }
    return g;
}

/* A process ending: its pid may be reused by a program that is not Go. */
TRACEPOINT_PROBE(sched, sched_process_exit) {
    u64 t = bpf_get_current_pid_tgid();
    if ((u32)t != (u32)(t >> 32))
        return 0;   /* a thread of the process, not its leader */
    u32 tgid = t >> 32;
    ft_go_procs.delete(&tgid);
    return 0;
}
#endif

#ifdef FT_HAVE_TURNS
/* Which thread did an exchange side's I/O (http.tid). The request direction of a TCP socket is
 * the direction of its first data I/O (a client sends a request first, a server receives one).
 * Each turn of the socket's data into that direction (a server's receive after its send, a
 * client's send after its receive: the start of the next request) is the thread that read or
 * wrote a request; it is sent (FT_L7_IO_TURN) only when its thread differs from the previous
 * turn's on that socket. A thread-per-connection server or a single-threaded client costs one
 * event per socket, whatever the number of exchanges; user space takes, for a row, the last
 * event on its socket before its response. Entries are removed when the socket closes (a socket
 * address is reused by later sockets) and the map is an LRU. */
struct sock_dir {
    u32 tid;               /* thread of the last turn into the request direction */
    u8 request_dir;        /* FT_L7_TURN_*: the direction of the socket's first data I/O */
    u8 last_dir;           /* of its last data I/O */
    u8 go;                 /* the socket's process is a Go program (FT_HAVE_GOROUTINES) */
    u8 _pad0;
    u64 g;                 /* Go: the goroutine of the last turn into the request direction */
};
BPF_TABLE("lru_hash", u64, struct sock_dir, ft_sock_dir, FT_SOCK_DIR_ENTRIES);

static __always_inline void turn_event(u64 sk, u8 dir, u64 t, u64 g) {
#ifdef FT_HAVE_GOROUTINES
    if (g)
        go_lineage(t >> 32, g);   /* before the turn: its goroutine's spawn rows precede it */
#endif
    struct l7_event *ev = l7_scratch();
    if (!ev)
        return;
    ev->ts_ns = bpf_ktime_get_ns();
    ev->kind = FT_L7_IO_TURN;
    ev->skaddr = sk;
    ev->ssl = g;
    ev->pid = t >> 32;
    ev->length = 0;
    ev->cap_len = 0;
    no_packet_fields(ev);
    ev->tcp_flags = dir;
    l7_submit(ev);
}

/* Go programs: the goroutine is part of a turn (a turn is sent when its thread or its goroutine
 * differs), and in the request direction a socket continued by another goroutine than the last
 * turn's sends one more: net/http's server reads a kept-alive connection's next request on its
 * serving goroutine, but a background read goroutine (started while the handler runs) may take
 * its first byte; the row takes the last turn before its response, the serving one. */
static __always_inline void io_turn(u64 sk, u8 dir) {
    struct sock_dir *d = ft_sock_dir.lookup(&sk);
    u64 t, g = 0;
    if (d && d->last_dir == dir) {
#ifdef FT_HAVE_GOROUTINES
        if (!d->go || dir != d->request_dir)
            return;   /* the common case: the same direction as the socket's last I/O */
        t = bpf_get_current_pid_tgid();
        g = go_current_g(t >> 32, sk);
        if (!g)
            return;
        if (g == d->g) {
            go_lineage(t >> 32, g);   /* the same g may be a new goroutine (g structs are reused): its spawn */
            return;
        }
        d->g = g;
        d->tid = (u32)t;
        turn_event(sk, dir, t, g);
#endif
        return;
    }
    t = bpf_get_current_pid_tgid();
#ifdef FT_HAVE_GOROUTINES
    if (!d || d->go)
        g = go_current_g(t >> 32, sk);
#endif
    if (d) {
        d->last_dir = dir;
        if (dir != d->request_dir)
            return;   /* a response's turn */
        if (d->tid == (u32)t && d->g == g) {   /* the same thread (and goroutine) as the last request's */
#ifdef FT_HAVE_GOROUTINES
            if (g)
                go_lineage(t >> 32, g);   /* ... or a new goroutine in a reused g: its spawn, not sent yet */
#endif
            return;
        }
        d->tid = (u32)t;
        d->g = g;
    } else {
        struct sock_dir nd = {};
        nd.tid = (u32)t;
        nd.request_dir = dir;
        nd.last_dir = dir;
        nd.go = g != 0;
        nd.g = g;
        ft_sock_dir.update(&sk, &nd);
    }
    turn_event(sk, dir, t, g);
}

/* A socket reaching CLOSE (or ESTABLISHED: a new life at an address) forgets its direction. */
TRACEPOINT_PROBE(sock, inet_sock_set_state) {
    if (args->protocol != 6 || (args->newstate != 7 && args->newstate != 1))
        return 0;
    u64 sk = (u64)args->skaddr;
    ft_sock_dir.delete(&sk);
    return 0;
}
#endif

#if defined(FT_HAVE_SSL) || defined(FT_HAVE_GOTLS) || defined(FT_HAVE_TURNS)
static __always_inline int ssl_socket_io(const void *sk, int rx, u16 protocol, int ret, int flags) {
    u32 zero = 0;
#ifdef FT_HAVE_TURNS
    /* TCP data only: not errors, EOF or MSG_PEEK (2), which moves no data */
    if (protocol == 6 && ret > 0 && !(rx && (flags & 2)))
        io_turn((u64)sk, rx ? FT_L7_TURN_RX : FT_L7_TURN_TX);
#endif
#ifdef FT_HAVE_SSL
    if (rx) {
        s64 *bio = ft_bio_on.lookup(&zero);
        if (bio && *bio > 0) {
            u64 t = bpf_get_current_pid_tgid();
            u32 tgid = t >> 32;
            if (ft_bio_pids.lookup(&tgid)) {
                u64 s = (u64)sk;
                ft_bio_rx.update(&t, &s);
            }
        }
    }
#endif
#if defined(FT_HAVE_SSL) || defined(FT_HAVE_GOTLS)
    s64 *inflight = ft_ssl_inflight.lookup(&zero);
    if (!inflight || *inflight <= 0)
        return 0;
    u64 tid = bpf_get_current_pid_tgid();
#ifdef FT_HAVE_SSL
    struct ssl_call *call = ft_ssl_calls.lookup(&tid);
    if (call) {
        call->sk = (u64)sk;
        return 0;
    }
#endif
#ifdef FT_HAVE_GOTLS
    u64 *g = ft_go_threads.lookup(&tid);
    if (g) {
        struct go_key k = {};
        k.g = *g;
        k.tgid = tid >> 32;
        struct go_call *gc = ft_go_calls.lookup(&k);
        if (gc && !gc->sk)
            gc->sk = (u64)sk;
    }
#endif
#endif
    return 0;
}
TRACEPOINT_PROBE(sock, sock_send_length) { return ssl_socket_io(args->sk, 0, args->protocol, args->ret, args->flags); }
TRACEPOINT_PROBE(sock, sock_recv_length) { return ssl_socket_io(args->sk, 1, args->protocol, args->ret, args->flags); }
#endif
