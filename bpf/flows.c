/* Per-flow packet and byte counters for flowtape's `flows` table (TC, tcx links).
 *
 * Stable ABI only: struct __sk_buff fields and packet bytes read with bpf_skb_load_bytes.
 *
 * Aggregation happens here; user space drains the counters every interval. Two flow maps
 * alternate behind a one-slot map-of-maps: user space points the slot at the other map (the
 * kernel waits for running programs before that update returns), then reads and clears the
 * idle one, so no packet is lost or counted in two intervals.
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

#define FT_ETH_P_IP 0x0800
#define FT_ETH_P_IPV6 0x86DD
#define FT_ETH_P_8021Q 0x8100
#define FT_ETH_P_8021AD 0x88A8
#define FT_TC_ACT_OK 0

BPF_HASH(ft_flows_a, struct flow_key, struct flow_val, FT_FLOW_ENTRIES);
BPF_HASH(ft_flows_b, struct flow_key, struct flow_val, FT_FLOW_ENTRIES);
BPF_ARRAY_OF_MAPS(ft_flow_active, "ft_flows_a", 1);
BPF_HASH(ft_ifaces, u32, struct iface_cfg, 4096);
BPF_PERCPU_ARRAY(ft_flow_ctr, u64, FT_FLOW_CTR_N);

static __always_inline void bump(u32 which) {
    u64 *c = ft_flow_ctr.lookup(&which);
    if (c)
        *c += 1;   /* per-CPU: no other writer */
}

static __always_inline int count_packet(struct __sk_buff *skb, u8 direction) {
    u32 ifindex = skb->ifindex;
    struct iface_cfg *cfg = ft_ifaces.lookup(&ifindex);
    if (!cfg)
        return FT_TC_ACT_OK;
    if (direction == FT_DIR_INGRESS) {
        if (!cfg->count_ingress)
            return FT_TC_ACT_OK;
    } else {
        if (!cfg->count_egress)
            return FT_TC_ACT_OK;
        u32 iif = skb->ingress_ifindex;
        if (iif != 0 && ft_ifaces.lookup(&iif))
            return FT_TC_ACT_OK;   /* counted where it entered the node */
    }

    struct flow_key key;
    __builtin_memset(&key, 0, sizeof(key));
    key.ifindex = ifindex;
    key.direction = direction;

    u32 off = 0;
    u16 proto = skb->protocol;   /* network order */
    if (cfg->l2_len == 14) {
        u8 eth[14];
        if (bpf_skb_load_bytes(skb, 0, eth, 14) != 0) {
            bump(FT_FLOW_CTR_TRUNCATED);
            return FT_TC_ACT_OK;
        }
        __builtin_memcpy(key.dst_mac, eth, 6);
        __builtin_memcpy(key.src_mac, eth + 6, 6);
        u16 ethertype = ((u16)eth[12] << 8) | eth[13];
        off = 14;
        if (ethertype == FT_ETH_P_8021Q || ethertype == FT_ETH_P_8021AD) {
            u8 tag[4];
            if (bpf_skb_load_bytes(skb, 14, tag, 4) != 0) {
                bump(FT_FLOW_CTR_TRUNCATED);
                return FT_TC_ACT_OK;
            }
            ethertype = ((u16)tag[2] << 8) | tag[3];
            off = 18;
        }
        proto = bpf_htons(ethertype);
    }

    u32 ip_hlen = 0, ip_len = 0;
    u8 l4proto = 0, first_fragment = 1;
    if (proto == bpf_htons(FT_ETH_P_IP)) {
        u8 ip[20];
        if (bpf_skb_load_bytes(skb, off, ip, 20) != 0) {
            bump(FT_FLOW_CTR_TRUNCATED);
            return FT_TC_ACT_OK;
        }
        key.family = 4;
        ip_hlen = (ip[0] & 0x0f) * 4;
        ip_len = ((u32)ip[2] << 8) | ip[3];
        first_fragment = ((((u16)ip[6] & 0x1f) << 8) | ip[7]) == 0;
        l4proto = ip[9];
        __builtin_memcpy(key.src_ip, ip + 12, 4);
        __builtin_memcpy(key.dst_ip, ip + 16, 4);
    } else if (proto == bpf_htons(FT_ETH_P_IPV6)) {
        u8 ip6[40];
        if (bpf_skb_load_bytes(skb, off, ip6, 40) != 0) {
            bump(FT_FLOW_CTR_TRUNCATED);
            return FT_TC_ACT_OK;
        }
        key.family = 6;
        ip_hlen = 40;
        ip_len = 40 + (((u32)ip6[4] << 8) | ip6[5]);
        l4proto = ip6[6];   /* extension headers are not walked: such packets keep no ports */
        __builtin_memcpy(key.src_ip, ip6 + 8, 16);
        __builtin_memcpy(key.dst_ip, ip6 + 24, 16);
    } else {
        bump(FT_FLOW_CTR_NOT_IP);
        return FT_TC_ACT_OK;
    }
    key.ip_proto = l4proto;

    u32 l4_hlen = 0;
    u16 tcp_flags = 0;
    u32 l4off = off + ip_hlen;
    if (first_fragment && (l4proto == 6 || l4proto == 17 || l4proto == 132)) {
        u8 ports[4];
        if (bpf_skb_load_bytes(skb, l4off, ports, 4) == 0) {
            key.src_port = ((u16)ports[0] << 8) | ports[1];
            key.dst_port = ((u16)ports[2] << 8) | ports[3];
        }
        if (l4proto == 6) {
            u8 t[2];   /* data offset, flags */
            if (bpf_skb_load_bytes(skb, l4off + 12, t, 2) == 0) {
                l4_hlen = (t[0] >> 4) * 4;
                tcp_flags = t[1];
            }
        } else if (l4proto == 17) {
            l4_hlen = 8;
        }
    }

    /* A GSO super-packet leaves the host as gso_segs packets, each with its own headers. */
    u64 packets = 1, bytes = ip_len;
    u32 segs = skb->gso_segs;
    if (segs > 1) {
        packets = segs;
        bytes = (u64)(skb->len - off) + (u64)(segs - 1) * (ip_hlen + l4_hlen);
    }

    u32 zero = 0;
    void *flows = ft_flow_active.lookup(&zero);
    if (!flows)
        return FT_TC_ACT_OK;
    u64 now = bpf_ktime_get_ns();
    struct flow_val *v = bpf_map_lookup_elem(flows, &key);
    if (!v) {
        struct flow_val init;
        __builtin_memset(&init, 0, sizeof(init));
        init.first_ns = now;
        init.last_ns = now;
        bpf_map_update_elem(flows, &key, &init, BPF_NOEXIST);   /* lost race: fine, exists */
        v = bpf_map_lookup_elem(flows, &key);
        if (!v) {
            bump(FT_FLOW_CTR_INSERT_FAILED);
            return FT_TC_ACT_OK;
        }
    }
    __sync_fetch_and_add(&v->packets, packets);
    __sync_fetch_and_add(&v->bytes, bytes);
    if (now > v->last_ns)
        v->last_ns = now;
    if ((v->tcp_flags & tcp_flags) != tcp_flags)
        v->tcp_flags |= tcp_flags;   /* may race with another CPU: see docs/recorder.md */
    return FT_TC_ACT_OK;
}

int ft_tc_ingress(struct __sk_buff *skb) { return count_packet(skb, FT_DIR_INGRESS); }
int ft_tc_egress(struct __sk_buff *skb) { return count_packet(skb, FT_DIR_EGRESS); }
