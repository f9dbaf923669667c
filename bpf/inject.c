/* Trace context injection: the IPv4 option type 136, length 20 (OBI/Beyla's layout: 0x88 0x14,
 * a 16-byte trace id, 2 bytes of zero padding) written into egress IPv4 TCP packets of
 * connections that carry none. Loaded only with `flowtape record --inject-trace-context
 * ip-option`; nothing here runs otherwise. This is the one flowtape program that changes
 * packets (DESIGN.md: opt-in only).
 *
 * Stable ABI only: struct __sk_buff fields, packet bytes and TC helpers (bpf_skb_adjust_room,
 * bpf_skb_store_bytes, bpf_check_mtu). No kernel struct is read.
 *
 * Which packets:
 *  - egress of the interfaces the recorder covers (not loopback), taken by the l7 rule
 *    (FT_TAKES: sent from this network namespace, or entered through an uncovered interface), so
 *    the l7 reader, attached after this program on the same hook, reads the option this program
 *    wrote and records it on this side (wire_trace_context, connections.wire_*) as the far side
 *    will;
 *  - IPv4 TCP only, unfragmented (IPv6 is left out: it needs a destination-options header);
 *  - not the packets of a connection that carries a trace context of its own: any IPv4 option
 *    on one of its egress packets (ours aside), an IPv4 option 136 on one of its ingress packets
 *    (a peer or a proxy that injects, OBI), a TCP option kind 25 either way. Such a connection
 *    is marked and never touched again (its packets before the mark were).
 * One trace id per connection (both directions share it), drawn at its first egress packet from
 * bpf_get_prandom_u32. Per connection, not per request: TC sees no request boundary on an
 * encrypted connection, and nothing here knows which request a process is serving.
 *
 * Size: the option makes a packet 20 bytes longer.
 *  - A GSO packet (gso_size set) is segmented later: bpf_skb_adjust_room lowers its gso_size by
 *    20 (no BPF_F_ADJ_ROOM_FIXED_GSO), so each segment, which copies the IP header and its
 *    option, still fits the MTU.
 *  - A packet that is not GSO is checked with bpf_check_mtu: one that would no longer fit (a
 *    full-size segment) is sent as it is and counted (FT_INJ_CTR_SKIPPED_MTU). TCP's MSS is
 *    not lowered (that would mean rewriting the peers' SYNs): the connection's other packets
 *    carry the id.
 * Checksums: the IPv4 header checksum is computed again over the new 40-byte header. The TCP
 * checksum does not change: its pseudo-header holds the addresses, the protocol and the TCP
 * length (IP total length minus header length), none of which changes.
 */
#include "events.h"

#define FT_INJ_OPT_LEN 20
#define FT_INJ_BPF_ADJ_ROOM_NET 0             /* enum bpf_adj_room_mode */
#define FT_INJ_NO_CSUM_RESET (1ULL << 5)       /* BPF_F_ADJ_ROOM_NO_CSUM_RESET: the checksum state stays */

#define FT_INJ_CTR_INJECTED 0        /* packets that got the option (a GSO packet counts once) */
#define FT_INJ_CTR_SKIPPED_MTU 1     /* not GSO and 20 bytes more would exceed the MTU: sent unchanged */
#define FT_INJ_CTR_SKIPPED_FOREIGN 2 /* wire packets (a GSO packet as its segments) of connections that carry a context (or options) of their own */
#define FT_INJ_CTR_SKIPPED_OTHER 3   /* VLAN-tagged in the packet, too long for a 16-bit length, or the kernel refused the resize */
#define FT_INJ_CTR_CONNECTIONS 4     /* connections given a trace id */
#define FT_INJ_CTR_MAP_FULL 5        /* connections not remembered (their packets were not changed) */
#define FT_INJ_CTR_SEGMENTS 6        /* wire packets that got it: a GSO packet counts as the segments it becomes */
#define FT_INJ_CTR_N 7

/* One entry per connection, the key ordered so that both directions find it (l7_flow_key with
 * the smaller address/port pair in saddr/sport). */
struct inj_conn {
    u8 trace_id[16];
    u8 foreign;            /* 1: the connection carries a context of its own; never touched */
    u8 _pad0[7];
};

struct inj_iface {
    u8 l2_len;             /* 14 for Ethernet, 0 for L3 devices */
    u8 inject;             /* 0 for loopback: injection only where packets leave the node */
    u8 count_ingress;      /* as struct iface_cfg: the plan's hooks */
    u8 count_egress;
};

BPF_TABLE("lru_hash", struct l7_flow_key, struct inj_conn, ft_inj_conns, FT_INJ_CONN_ENTRIES);
BPF_HASH(ft_inj_ifaces, u32, struct inj_iface, 4096);
BPF_PERCPU_ARRAY(ft_inj_ctr, u64, FT_INJ_CTR_N);

static __always_inline void inj_add(u32 which, u64 n) {
    u64 *c = ft_inj_ctr.lookup(&which);
    if (c)
        *c += n;   /* per-CPU: no other writer */
}

static __always_inline void inj_bump(u32 which) {
    inj_add(which, 1);
}

/* The wire packets an unchanged packet becomes (gso_segs is set for GSO packets). */
static __always_inline u64 wire_packets(struct __sk_buff *skb) {
    u32 n = skb->gso_segs;
    return n > 1 ? n : 1;
}

static __always_inline struct inj_iface *inj_iface(u32 ifindex) {
    return ft_inj_ifaces.lookup(&ifindex);
}

/* The connection's key: the lower (address, port) end first. */
static __always_inline void conn_key(struct l7_flow_key *k, struct ft_packet *p, u16 sport, u16 dport) {
    __builtin_memset(k, 0, sizeof(*k));
    k->family = 4;
    u32 s = ((u32)p->saddr[0] << 24) | ((u32)p->saddr[1] << 16) | ((u32)p->saddr[2] << 8) | p->saddr[3];
    u32 d = ((u32)p->daddr[0] << 24) | ((u32)p->daddr[1] << 16) | ((u32)p->daddr[2] << 8) | p->daddr[3];
    if (s < d || (s == d && sport <= dport)) {
        __builtin_memcpy(k->saddr, p->saddr, 4);
        __builtin_memcpy(k->daddr, p->daddr, 4);
        k->sport = sport;
        k->dport = dport;
    } else {
        __builtin_memcpy(k->saddr, p->daddr, 4);
        __builtin_memcpy(k->daddr, p->saddr, 4);
        k->sport = dport;
        k->dport = sport;
    }
}

/* Whether TCP options at off (n bytes) hold kind 25 (a trace context of the application's side). */
static __always_inline int has_tcp_trace_option(struct __sk_buff *skb, u32 off, u32 n) {
    u8 opts[64] = {};
    if (n < 26)
        return 0;
    if (n > 40)
        n = 40;
    u32 want = n;
    asm volatile("" : "+r"(want));
    want = ((want - 1) & 63) + 1;
    if (bpf_skb_load_bytes(skb, off, opts, want) != 0)
        return 0;
    u32 i = 0;
#pragma unroll
    for (int step = 0; step < 20; step++) {
        if (i + 1 >= n || i + 1 >= 40)
            return 0;
        u8 kind = opts[i & 63];
        if (kind == 0)
            return 0;
        if (kind == 1) {
            i += 1;
            continue;
        }
        u8 len = opts[(i + 1) & 63];
        if (len < 2)
            return 0;
        if (kind == 25)
            return 1;
        i += len;
    }
    return 0;
}

static __always_inline void mark_foreign(struct l7_flow_key *key, struct inj_conn *c) {
    if (c) {
        c->foreign = 1;
        return;
    }
    struct inj_conn n = {};
    n.foreign = 1;
    ft_inj_conns.update(key, &n);
}

/* The parsed IPv4 TCP packet, or 0 to leave it alone. */
static __always_inline int inj_parse(struct __sk_buff *skb, struct inj_iface *cfg, struct ft_packet *pkt, u8 *ip, u16 *sport, u16 *dport,
                                     u32 *doff) {
    __builtin_memset(pkt, 0, sizeof(*pkt));
    if (ft_parse_packet(skb, cfg->l2_len, pkt) != FT_PKT_OK || pkt->family != 4 || pkt->l4proto != 6)
        return 0;
    if (hdr(skb, pkt->off, ip, 20) != 0)
        return 0;
    if ((ip[6] & 0x3f) != 0 || ip[7] != 0)
        return 0;   /* a fragment (MF set or an offset): left alone */
    u8 th[13];
    if (hdr(skb, pkt->off + pkt->ip_hlen, th, 13) != 0)
        return 0;
    *sport = ((u16)th[0] << 8) | th[1];
    *dport = ((u16)th[2] << 8) | th[3];
    *doff = (th[12] >> 4) * 4;
    return 1;
}

/* Ingress: only looks. A connection whose peer sends a trace context (IPv4 option 136 or TCP
 * option 25) is marked, so its egress packets are never given ours. */
int ft_inject_ingress(struct __sk_buff *skb) {
    struct inj_iface *cfg = inj_iface(skb->ifindex);
    if (!cfg || !cfg->count_ingress)
        return FT_TCX_NEXT;
    struct ft_packet pkt;
    u8 ip[20];
    u16 sport, dport;
    u32 doff;
    if (!inj_parse(skb, cfg, &pkt, ip, &sport, &dport, &doff))
        return FT_TCX_NEXT;
    int carries = 0;
    if (pkt.ip_hlen >= 20 + FT_INJ_OPT_LEN) {
        u8 o[2];
        /* the option where an injector puts it (first after the base header), as OBI reads it */
        if (hdr(skb, pkt.off + 20, o, 2) == 0 && o[0] == 136 && o[1] == FT_INJ_OPT_LEN)
            carries = 1;
    }
    if (!carries && doff >= 20 + 26)
        carries = has_tcp_trace_option(skb, pkt.off + pkt.ip_hlen + 20, doff - 20);
    if (!carries)
        return FT_TCX_NEXT;
    struct l7_flow_key key;
    conn_key(&key, &pkt, sport, dport);
    struct inj_conn *c = ft_inj_conns.lookup(&key);
    if (!c || !c->foreign)
        mark_foreign(&key, c);
    return FT_TCX_NEXT;
}

static __always_inline u16 ip_checksum(const u8 *h) {
    u32 sum = 0;
#pragma unroll
    for (int i = 0; i < 40; i += 2)
        sum += ((u32)h[i] << 8) | h[i + 1];
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    return ~sum & 0xffff;
}

int ft_inject_egress(struct __sk_buff *skb) {
    struct inj_iface *cfg = inj_iface(skb->ifindex);
    if (!cfg || !cfg->inject || !FT_TAKES(cfg, FT_DIR_EGRESS, skb, inj_iface))
        return FT_TCX_NEXT;
    struct ft_packet pkt;
    u8 ip[20];
    u16 sport, dport;
    u32 doff;
    if (!inj_parse(skb, cfg, &pkt, ip, &sport, &dport, &doff))
        return FT_TCX_NEXT;
    struct l7_flow_key key;
    conn_key(&key, &pkt, sport, dport);
    struct inj_conn *c = ft_inj_conns.lookup(&key);
    if (c && c->foreign) {
        inj_add(FT_INJ_CTR_SKIPPED_FOREIGN, wire_packets(skb));
        return FT_TCX_NEXT;
    }
    if (pkt.ip_hlen != 20 || (doff >= 20 + 26 && has_tcp_trace_option(skb, pkt.off + pkt.ip_hlen + 20, doff - 20))) {
        /* options of its own: ours from an earlier hop of this node (the same id: nothing to do),
         * else the connection is not ours to touch */
        if (c && pkt.ip_hlen == 20 + FT_INJ_OPT_LEN) {
            u8 o[18];
            if (hdr(skb, pkt.off + 20, o, 18) == 0 && o[0] == 136 && o[1] == FT_INJ_OPT_LEN) {
                u64 a0, a1, b0, b1;
                __builtin_memcpy(&a0, o + 2, 8); __builtin_memcpy(&a1, o + 10, 8);
                __builtin_memcpy(&b0, c->trace_id, 8); __builtin_memcpy(&b1, c->trace_id + 8, 8);
                if (a0 == b0 && a1 == b1)
                    return FT_TCX_NEXT;
            }
        }
        mark_foreign(&key, c);
        inj_add(FT_INJ_CTR_SKIPPED_FOREIGN, wire_packets(skb));
        return FT_TCX_NEXT;
    }
    if (pkt.off != cfg->l2_len || pkt.ip_len == 0 || pkt.ip_len + FT_INJ_OPT_LEN > 0xffff) {
        inj_bump(FT_INJ_CTR_SKIPPED_OTHER);   /* a VLAN tag in the packet; a BIG TCP packet (length 0) */
        return FT_TCX_NEXT;
    }
    if (skb->gso_size == 0) {
        u32 mtu_len = 0;
        if (bpf_check_mtu(skb, 0, &mtu_len, FT_INJ_OPT_LEN, 0) != 0) {
            inj_bump(FT_INJ_CTR_SKIPPED_MTU);
            return FT_TCX_NEXT;
        }
    }
    struct inj_conn fresh = {};
    if (!c) {
        u32 r[4];
        r[0] = bpf_get_prandom_u32();
        r[1] = bpf_get_prandom_u32();
        r[2] = bpf_get_prandom_u32();
        r[3] = bpf_get_prandom_u32() | 1;   /* never the all-zero (invalid) trace id */
        __builtin_memcpy(fresh.trace_id, r, 16);
        if (ft_inj_conns.insert(&key, &fresh) != 0) {
            c = ft_inj_conns.lookup(&key);   /* another CPU drew one first: take it */
            if (!c) {
                inj_bump(FT_INJ_CTR_MAP_FULL);
                return FT_TCX_NEXT;
            }
            if (c->foreign)
                return FT_TCX_NEXT;
            __builtin_memcpy(fresh.trace_id, c->trace_id, 16);
        } else {
            inj_bump(FT_INJ_CTR_CONNECTIONS);
        }
    } else {
        __builtin_memcpy(fresh.trace_id, c->trace_id, 16);
    }

    u8 h[40];
    __builtin_memcpy(h, ip, 20);
    h[0] = (h[0] & 0xf0) | ((20 + FT_INJ_OPT_LEN) / 4);
    u32 tot = pkt.ip_len + FT_INJ_OPT_LEN;
    h[2] = tot >> 8;
    h[3] = tot & 0xff;
    h[10] = 0;
    h[11] = 0;
    h[20] = 136;
    h[21] = FT_INJ_OPT_LEN;
    __builtin_memcpy(h + 22, fresh.trace_id, 16);
    h[38] = 0;
    h[39] = 0;
    u16 sum = ip_checksum(h);
    h[10] = sum >> 8;
    h[11] = sum & 0xff;
    u32 off = pkt.off;
    /* the wire packets this becomes: a GSO packet is cut into segments of gso_size - 20 payload bytes */
    u64 segs = 1;
    u32 gso = skb->gso_size;
    if (gso > FT_INJ_OPT_LEN) {
        u32 hdrs = off + 20 + doff;
        u32 pay = skb->len > hdrs ? skb->len - hdrs : 0;
        u32 per = gso - FT_INJ_OPT_LEN;
        segs = pay ? (pay + per - 1) / per : 1;
    }
    /* room for the option right after the 20-byte base header (BPF_ADJ_ROOM_NET grows there) */
    if (bpf_skb_adjust_room(skb, FT_INJ_OPT_LEN, FT_INJ_BPF_ADJ_ROOM_NET, FT_INJ_NO_CSUM_RESET) != 0) {
        inj_bump(FT_INJ_CTR_SKIPPED_OTHER);
        return FT_TCX_NEXT;
    }
    if (bpf_skb_store_bytes(skb, off & 0xff, h, 40, 0) != 0) {
        /* the room is there but the header could not be written: the packet is malformed now */
        inj_bump(FT_INJ_CTR_SKIPPED_OTHER);
        return 2;   /* TC_ACT_SHOT: never send a broken header */
    }
    inj_bump(FT_INJ_CTR_INJECTED);
    inj_add(FT_INJ_CTR_SEGMENTS, segs);
    return FT_TCX_NEXT;
}
