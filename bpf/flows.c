/* Per-flow packet and byte counters for flowtape's `flows` table (TC, tcx links).
 *
 * Stable ABI only: struct __sk_buff fields and packet bytes (direct packet access through
 * skb->data/data_end; bpf_skb_load_bytes only for headers outside the linear part).
 *
 * Aggregation happens here; user space drains the counters every interval. The flow maps are
 * per-CPU hashes (no atomics, no shared cache lines: user space sums the CPUs at drain), one
 * with a 32-byte key for IPv4 and one with the 60-byte struct flow_key for IPv6. Each exists
 * twice and the two alternate behind a one-slot map-of-maps: user space points the slot at
 * the other map (the kernel waits for running programs before that update returns), then
 * reads and clears the idle one, so no packet is lost or counted in two intervals.
 *
 * Counting once per node: a packet that crosses several interfaces (pod veth, bridge, NIC)
 * is counted at the first covered interface it meets.
 *  - ingress: counted, except on loopback (every lo ingress was just an lo egress) and on
 *    bridges (their ports saw the frame);
 *  - egress: counted only when the packet did not enter the node through a covered
 *    interface (skb->ingress_ifindex is 0 for locally generated packets, or names an
 *    interface the recorder does not cover); bridges never count (their ports do).
 */
#include "events.h"


BPF_PERCPU_HASH(ft_flows4_a, struct flow_key4, struct flow_val, FT_FLOW_ENTRIES);
BPF_PERCPU_HASH(ft_flows4_b, struct flow_key4, struct flow_val, FT_FLOW_ENTRIES);
BPF_PERCPU_HASH(ft_flows6_a, struct flow_key, struct flow_val, FT_FLOW6_ENTRIES);
BPF_PERCPU_HASH(ft_flows6_b, struct flow_key, struct flow_val, FT_FLOW6_ENTRIES);
BPF_ARRAY_OF_MAPS(ft_flow_active4, "ft_flows4_a", 1);
BPF_ARRAY_OF_MAPS(ft_flow_active6, "ft_flows6_a", 1);
/* Covered interfaces: an array indexed by ifindex (a lookup the verifier inlines) for ifindex
 * < FT_IFACE_ARRAY, the hash for the others. */
BPF_ARRAY(ft_ifaces_arr, struct iface_cfg, FT_IFACE_ARRAY);
BPF_HASH(ft_ifaces, u32, struct iface_cfg, 4096);
BPF_PERCPU_ARRAY(ft_flow_ctr, u64, FT_FLOW_CTR_N);

static __always_inline int bump(u32 which) {
    u64 *c = ft_flow_ctr.lookup(&which);
    if (c)
        *c += 1;   /* per-CPU: no other writer */
    return FT_TCX_NEXT;
}

/* Add one packet to this CPU's copy of the flow's counters (insert the flow if new). */
static __always_inline int add(void *flows, void *key, u64 packets, u64 bytes, u16 tcp_flags) {
    u64 now = bpf_ktime_get_ns();
    struct flow_val *v = bpf_map_lookup_elem(flows, key);
    if (!v) {
        struct flow_val init = {};
        init.packets = packets;
        init.bytes = bytes;
        init.first_ns = now;
        init.last_ns = now;
        init.tcp_flags = tcp_flags;
        /* From a program, a per-CPU insert sets this CPU's copy and zeroes the others. */
        if (bpf_map_update_elem(flows, key, &init, BPF_NOEXIST) == 0)
            return FT_TCX_NEXT;
        v = bpf_map_lookup_elem(flows, key);   /* another CPU inserted it meanwhile */
        if (!v)
            return bump(FT_FLOW_CTR_INSERT_FAILED);
    }
    if (v->first_ns == 0)
        v->first_ns = now;   /* first packet of this flow on this CPU */
    v->packets += packets;   /* per-CPU copy: no other writer */
    v->bytes += bytes;
    v->last_ns = now;
    v->tcp_flags |= tcp_flags;
    return FT_TCX_NEXT;
}

static __always_inline struct iface_cfg *iface(u32 ifindex) {
    if (ifindex < FT_IFACE_ARRAY) {
        struct iface_cfg *cfg = ft_ifaces_arr.lookup(&ifindex);
        return cfg && cfg->covered ? cfg : 0;
    }
    return ft_ifaces.lookup(&ifindex);
}

static __always_inline int count_packet(struct __sk_buff *skb, u8 direction) {
    u32 ifindex = skb->ifindex;
    struct iface_cfg *cfg = iface(ifindex);
    if (!cfg || !FT_TAKES(cfg, direction, skb, iface))
        return FT_TCX_NEXT;
    u32 l2_len = cfg->l2_len;
    u32 len = skb->len;

    struct flow_key4 k4 = {};
    struct flow_key k6 = {};
    struct ft_packet pkt = {};
    int st = ft_parse_packet(skb, l2_len, &pkt);
    if (st == FT_PKT_NOT_IP)
        return bump(FT_FLOW_CTR_NOT_IP);
    if (st != FT_PKT_OK)
        return bump(FT_FLOW_CTR_TRUNCATED);
    u32 off = pkt.off, ip_hlen = pkt.ip_hlen, ip_len = pkt.ip_len;
    u8 l4proto = pkt.l4proto;
    int first_fragment = pkt.first_fragment, v4 = pkt.family == 4;
    if (v4) {
        __builtin_memcpy(k4.src_ip, pkt.saddr, 4);
        __builtin_memcpy(k4.dst_ip, pkt.daddr, 4);
    } else {
        __builtin_memcpy(k6.src_ip, pkt.saddr, 16);
        __builtin_memcpy(k6.dst_ip, pkt.daddr, 16);
    }

    u16 src_port = 0, dst_port = 0, tcp_flags = 0;
    u32 l4_hlen = 0;
    u32 l4off = off + ip_hlen;
    if (first_fragment && (l4proto == 6 || l4proto == 17 || l4proto == 132)) {
        u8 l4[14];
        if (l4proto == 6 && hdr(skb, l4off, l4, 14) == 0) {
            l4_hlen = (l4[12] >> 4) * 4;
            tcp_flags = l4[13];
            src_port = ((u16)l4[0] << 8) | l4[1];
            dst_port = ((u16)l4[2] << 8) | l4[3];
        } else if (hdr(skb, l4off, l4, 4) == 0) {
            src_port = ((u16)l4[0] << 8) | l4[1];
            dst_port = ((u16)l4[2] << 8) | l4[3];
        }
        if (l4proto == 17)
            l4_hlen = 8;
    }

    /* A GSO super-packet leaves the host as gso_segs packets, each with its own headers. */
    u64 packets = 1, bytes = ip_len;
    u32 segs = skb->gso_segs;
    if (segs > 1) {
        packets = segs;
        bytes = (u64)(len - off) + (u64)(segs - 1) * (ip_hlen + l4_hlen);
    }

    u32 zero = 0;
    if (v4) {
        k4.ifindex = ifindex;
        k4.direction = direction;
        k4.ip_proto = l4proto;
        k4.src_port = src_port;
        k4.dst_port = dst_port;
        __builtin_memcpy(k4.dst_mac, pkt.eth, 6);
        __builtin_memcpy(k4.src_mac, pkt.eth + 6, 6);
        void *flows = ft_flow_active4.lookup(&zero);
        if (!flows)
            return FT_TCX_NEXT;
        return add(flows, &k4, packets, bytes, tcp_flags);
    }
    k6.ifindex = ifindex;
    k6.direction = direction;
    k6.family = 6;
    k6.ip_proto = l4proto;
    k6.src_port = src_port;
    k6.dst_port = dst_port;
    __builtin_memcpy(k6.dst_mac, pkt.eth, 6);
    __builtin_memcpy(k6.src_mac, pkt.eth + 6, 6);
    void *flows = ft_flow_active6.lookup(&zero);
    if (!flows)
        return FT_TCX_NEXT;
    return add(flows, &k6, packets, bytes, tcp_flags);
}

int ft_tc_ingress(struct __sk_buff *skb) { return count_packet(skb, FT_DIR_INGRESS); }
int ft_tc_egress(struct __sk_buff *skb) { return count_packet(skb, FT_DIR_EGRESS); }
