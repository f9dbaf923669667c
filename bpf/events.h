/* Event and map structs shared by the flowtape eBPF programs and decoded by Python, and
 * hdr() and ft_parse_packet(), the packet-header reads both TC programs use.
 *
 * Declared once, here. The Python side reads these layouts through bcc (which parses the
 * C), so there is no hand-kept ctypes twin. Units are in the names. Padding is explicit so
 * the layout is the same for the compiler and for bcc's decoder; keys are memset to zero
 * before use because the kernel hashes every byte.
 *
 * Addresses: one form for v4 and v6, 16 bytes + family (v4 in the first 4 bytes, network
 * byte order). Ports are host byte order.
 */
#ifndef FLOWTAPE_EVENTS_H
#define FLOWTAPE_EVENTS_H

/* What both TC programs return: TCX_NEXT (TC_ACT_UNSPEC), "not my decision, run the next
 * program on this hook". TCX_PASS (0) would end the chain there: the programs attached after
 * ours (flows' then l7's, or another tool's) would never see the packet. */
#define FT_TCX_NEXT -1

/* ---- flows (bpf/flows.c) ------------------------------------------------------------- */

#define FT_DIR_INGRESS 0
#define FT_DIR_EGRESS 1

struct flow_key {
    u32 ifindex;
    u8 direction;          /* FT_DIR_* */
    u8 family;             /* 4 or 6 */
    u8 ip_proto;           /* IPPROTO_* */
    u8 _pad0;
    u8 src_mac[6];
    u8 dst_mac[6];
    u8 src_ip[16];
    u8 dst_ip[16];
    u16 src_port;          /* 0 for protocols without ports */
    u16 dst_port;
    u32 _pad1;
};

/* IPv4 flows use this smaller key (32 bytes instead of 60: less to hash and compare per
 * packet); struct flow_key above is the IPv6 key. Every byte is a field: no hidden padding. */
struct flow_key4 {
    u32 ifindex;
    u8 direction;          /* FT_DIR_* */
    u8 ip_proto;           /* IPPROTO_* */
    u16 src_port;          /* 0 for protocols without ports */
    u16 dst_port;
    u8 src_mac[6];
    u8 dst_mac[6];
    u16 _pad0;
    u8 src_ip[4];          /* network byte order */
    u8 dst_ip[4];
};

/* Per-CPU in the flow maps (BPF_PERCPU_HASH): each CPU adds to its own copy without atomics;
 * user space sums packets and bytes, ORs tcp_flags, and takes the earliest first_ns and the
 * latest last_ns over the CPUs that saw packets. */
struct flow_val {
    u64 packets;           /* wire packets: a GSO super-packet counts as its segments */
    u64 bytes;             /* IP total length summed over those packets */
    u64 first_ns;          /* bpf_ktime_get_ns() of the first packet in the interval (on this CPU) */
    u64 last_ns;
    u16 tcp_flags;         /* OR of the TCP flags byte (CWR..FIN) */
    u16 _pad0;
    u32 _pad1;
};

/* Per-interface setting, filled by user space when it attaches. An interface that is in
 * this map is "covered": its packets are counted on it (or, for a bridge, on its ports).
 * Egress packets that entered the node through a covered interface were counted there. */
struct iface_cfg {
    u8 l2_len;             /* link header length: 14 for Ethernet, 0 for L3 devices */
    u8 count_ingress;      /* 0 for loopback (every lo ingress was an lo egress) and bridges */
    u8 count_egress;       /* 0 for bridges (their ports see the same frames) */
    u8 covered;            /* 1 (an entry of ft_ifaces_arr that is 0 is an interface not covered) */
};

/* Whether a TC program on an interface with config `cfg` takes a packet in `direction`: only in
 * the directions the plan gives the interface, and a packet leaving the node that entered it
 * through a covered interface (`covered(ifindex)` non-null) was taken there: once per node.
 * A macro so the ingress path does no lookup of the entering interface. */
#define FT_TAKES(cfg, direction, skb, covered)                                                      \
    ((direction) == FT_DIR_INGRESS ? (cfg)->count_ingress                                           \
                                   : ((cfg)->count_egress && !((skb)->ingress_ifindex != 0 && covered((skb)->ingress_ifindex))))

#define FT_FLOW_CTR_INSERT_FAILED 0   /* flow map full: packets not counted */
#define FT_FLOW_CTR_NOT_IP 1          /* non-IP frames (ARP, LLDP...): not a flow, not lost */
#define FT_FLOW_CTR_TRUNCATED 2       /* IP header not readable: packet not counted */
#define FT_FLOW_CTR_N 3

/* ---- connections (bpf/connections.c) ------------------------------------------------- */

#define FT_EV_STATE 1        /* a TCP endpoint reached CLOSE (sock:inet_sock_set_state; stats when
                                sock_ops saw it), with everything its row needs. The steps
                                before only update the socket's struct sock_info in the kernel
                                (the owner of a server socket included). User space also
                                understands ESTABLISHED events, which the kernel no longer sends. */
#define FT_EV_ACCEPT 2       /* accept()/accept4() returned: owner of the peer's connection
                                (no longer sent: accept fills sock_info in the kernel) */
#define FT_EV_OWNER 3        /* first send/recv by a process on a server socket not yet owned
                                (no longer sent: filled into sock_info in the kernel) */
#define FT_EV_ERROR 4        /* sock:inet_sk_error_report (ECONNREFUSED, ETIMEDOUT, ...) */

/* What the kernel remembers about a TCP endpoint between its state changes (skaddr -> info). */
#define FT_F_CLIENT 1          /* it called connect() */
#define FT_F_FIN_SENT 2        /* it went through FIN_WAIT1, CLOSING or LAST_ACK */
#define FT_F_FIN_IN 4          /* it went to CLOSE_WAIT or CLOSING: the peer's FIN was counted */
#define FT_F_FIN_WAIT2 8       /* rx_at_fin_wait2_b is set */
#define FT_F_ACCEPTED 16       /* a server socket whose accept() found it in ft_peers (entry gone) */

struct sock_info {
    u64 ts_start_ns;       /* client: connect(); server: handshake completed */
    u64 rx_at_fin_wait2_b; /* bytes_received when it entered FIN_WAIT2 */
    u64 cgroup_id;
    u32 pid;               /* owner (0 while unknown): connect()'s caller, or who accept()ed it */
    u8 flags;              /* FT_F_* */
    u8 _pad0[3];
    char comm[16];
    /* Set when it reached ESTABLISHED (no event is sent then: user space reads the map for the
     * endpoints still open when recording stops). */
    u64 ts_established_ns; /* 0: never established */
    u64 cookie;            /* socket cookie from sock_ops at ESTABLISHED, 0 when unknown */
    u8 saddr[16];          /* local address */
    u8 daddr[16];          /* remote address */
    u16 sport;             /* local port */
    u16 dport;             /* remote port */
    u16 family;            /* AF_INET (2) / AF_INET6 (10); 0 before ESTABLISHED */
    u16 _pad1;
};

struct conn_event {
    u64 ts_ns;             /* bpf_ktime_get_ns() */
    u64 ts_start_ns;       /* FT_EV_STATE: sock_info.ts_start_ns */
    u64 rx_at_fin_wait2_b; /* FT_EV_STATE: sock_info.rx_at_fin_wait2_b */
    u64 skaddr;            /* kernel socket address as given by the tracepoint: an identity
                              while the socket lives, never dereferenced */
    u64 cookie;            /* socket cookie (sock_ops), 0 when unknown */
    u64 cgroup_id;         /* cgroup v2 id of the current task (process context only) */
    u64 bytes_acked;       /* sock_ops counters at this state change (has_stats) */
    u64 bytes_received;
    u32 segs_out;
    u32 segs_in;
    u32 srtt_us;           /* already >> 3 */
    u32 total_retrans;
    u32 snd_una;
    u32 snd_nxt;
    u32 pid;               /* tgid of the current task (process context only) */
    s32 error;             /* FT_EV_ERROR: errno */
    u8 saddr[16];          /* local address for FT_EV_STATE; peer address for FT_EV_ACCEPT */
    u8 daddr[16];          /* remote address */
    u16 sport;             /* local port */
    u16 dport;             /* remote port */
    u16 family;            /* AF_INET (2) / AF_INET6 (10); 0 when unknown */
    u8 kind;               /* FT_EV_* */
    u8 oldstate;
    u8 newstate;
    u8 has_stats;          /* 1 when the sock_ops counters above are filled */
    u8 in_task;            /* 1 when pid/comm/cgroup_id belong to the socket's owner */
    u8 flags;              /* FT_EV_STATE: sock_info.flags */
    char comm[16];
    u32 _pad1;
    u64 ts_established_ns; /* FT_EV_STATE at CLOSE: when it reached ESTABLISHED (0: never) */
};

/* ---- L7 payload prefixes (bpf/l7.c) --------------------------------------------------- */

#define FT_L7_DNS_UDP 1      /* a UDP datagram from or to port 53: its first bytes */
#define FT_L7_DNS_TCP 2      /* a TCP segment with payload from or to port 53 */
#define FT_L7_HTTP 3         /* a payload segment of a TCP flow that started with an HTTP request */
#define FT_L7_TLS_HELLO 4    /* a client segment starting (or continuing) a TLS ClientHello */
#define FT_L7_TCP_END 5      /* FIN or RST of a followed TCP flow (tcp_flags says which) */
#define FT_L7_SSL_WRITE 6    /* SSL_write/SSL_write_ex returned: plaintext the process sent */
#define FT_L7_SSL_READ 7     /* SSL_read/SSL_read_ex returned: plaintext the process received */
#define FT_L7_SSL_FREE 8     /* SSL_free: the SSL* ends (its stream is over; the pointer may be reused) */
#define FT_L7_IO_TURN 9      /* a TCP socket's data turned into its request direction (that of its first data
                                I/O: a server's receive, a client's send) on another thread than the last
                                time, or for the first time: thread `tid` of `pid` (sock:sock_{recv,send}_length,
                                process context); tcp_flags says which direction (FT_L7_TURN_*). http.tid.
                                Go programs (FT_HAVE_GOROUTINES): `ssl` holds the goroutine (http.goroutine, 0
                                when not Go), and a turn is also sent when another goroutine continues the
                                request direction (see bpf/l7.c io_turn). */
#define FT_L7_TURN_RX 1
#define FT_L7_TURN_TX 2
#define FT_L7_WIRE_TRACE 10  /* a TCP packet carried a trace context below HTTP, first seen in its direction of
                                its flow or changed (see bpf/l7.c wire_trace): data[0:16] the trace id,
                                data[16:24] the span id; tcp_flags says where (FT_L7_WIRE_*) */
#define FT_L7_WIRE_IP_OPTION 1   /* IPv4 option type 136, length 20 (OBI/Beyla) */
#define FT_L7_WIRE_TCP_OPTION 2  /* TCP option kind 25, length 26 */
#define FT_L7_GO_SPAWN 11     /* runtime.newproc1 returned in Go program `pid`: data[0:8] the creator's g (its
                                callergp argument), data[8:16] the new g (its result), both little-endian. go_spawns. */

#define FT_L7_DATA_MAX 2048  /* the largest prefix any event carries (HTTP segments, TLS ClientHellos); DNS and SSL plaintext: 512 */

/* One L7 event. Only the first cap_len bytes of data[] are sent (the ring buffer record is
 * offsetof(data) + cap_len bytes long). User space reads the header through bcc's parse of
 * this declaration. */
struct l7_event {
    u64 ts_ns;             /* bpf_ktime_get_ns() */
    u64 skaddr;            /* SSL events: the socket the SSL* did its I/O on (sock:sock_*_length
                              on the same thread); 0 when not seen yet. An identity only. */
    u64 ssl;               /* SSL events: the SSL* pointer (an identity within the process); IO_TURN: the goroutine (Go), else 0 */
    u32 length;            /* payload bytes of the segment / of the SSL call's result */
    u32 seq;               /* TCP events: sequence number of the first payload byte */
    u32 pid;               /* SSL events: tgid of the caller */
    u16 cap_len;           /* bytes of data[] filled */
    u16 family;            /* 4 or 6 (packet events); 0 for SSL events */
    u8 saddr[16];          /* packet source (SSL events: unused) */
    u8 daddr[16];
    u16 sport;             /* host order */
    u16 dport;
    u8 kind;               /* FT_L7_* */
    u8 tcp_flags;          /* TCP flags byte of the segment */
    u8 from_client;        /* HTTP/TCP_END: 1 when the packet goes client -> server */
    u8 _pad0;
    char comm[16];         /* SSL events: the caller's command name */
    u32 tid;               /* SSL and IO_TURN events: the calling thread (kernel task id); 0 for packet events */
    u8 data[FT_L7_DATA_MAX];
};

/* ---- shared by the TC programs (flows.c, l7.c) ---------------------------------------- */

/* Copy n header bytes at off: straight from the linear part (direct packet access) when they
 * are there, which is nearly always; else with bpf_skb_load_bytes (no change to the skb: a
 * bpf_skb_pull_data would un-clone TCP's clones and copy heads of sendfile'd packets). */
static __always_inline int hdr(struct __sk_buff *skb, u32 off, void *to, u32 n) {
    u8 *data = (u8 *)(long)skb->data;
    u8 *end = (u8 *)(long)skb->data_end;
    if (off > 0xff)
        return -1;   /* headers are within the first 255 bytes; bounds the offset for the verifier */
    u8 *p = data + off;
    if (p + n <= end) {
        __builtin_memcpy(to, p, n);
        return 0;
    }
    return bpf_skb_load_bytes(skb, off, to, n);
}

#define FT_ETH_P_IP 0x0800
#define FT_ETH_P_IPV6 0x86DD
#define FT_ETH_P_8021Q 0x8100
#define FT_ETH_P_8021AD 0x88A8

/* The link and network headers of a packet, as both TC programs read them. */
struct ft_packet {
    u8 eth[14];            /* the Ethernet header (zero where the interface has none) */
    u8 family;             /* 4 or 6 */
    u8 l4proto;            /* IPv4 protocol / IPv6 next header (extension headers are not walked) */
    u8 first_fragment;     /* 0 for a later IPv4 fragment: it carries no L4 header */
    u8 _pad0;
    u32 off;               /* where the IP header starts (after Ethernet and one VLAN tag) */
    u32 ip_hlen;           /* IP header bytes (40 for IPv6) */
    u32 ip_len;            /* IP total length, headers included */
    u8 saddr[16];          /* IPv4 in the first 4 bytes */
    u8 daddr[16];
};

#define FT_PKT_OK 0
#define FT_PKT_L2_TRUNCATED 1   /* the Ethernet header or VLAN tag could not be read */
#define FT_PKT_L3_TRUNCATED 2   /* the IP header could not be read */
#define FT_PKT_NOT_IP 3         /* neither IPv4 nor IPv6 */

/* Parse Ethernet (with one 802.1Q/802.1ad tag) when l2_len is 14, then the IPv4 or IPv6 header. */
static __always_inline int ft_parse_packet(struct __sk_buff *skb, u32 l2_len, struct ft_packet *p) {
    u16 proto = skb->protocol;   /* network order */
    p->off = 0;
    if (l2_len == 14) {
        if (hdr(skb, 0, p->eth, 14) != 0)
            return FT_PKT_L2_TRUNCATED;
        proto = *(u16 *)(p->eth + 12);
        p->off = 14;
        if (proto == bpf_htons(FT_ETH_P_8021Q) || proto == bpf_htons(FT_ETH_P_8021AD)) {
            u8 tag[4];   /* the tag's TCI, then the inner type */
            if (hdr(skb, 14, tag, 4) != 0)
                return FT_PKT_L2_TRUNCATED;
            proto = *(u16 *)(tag + 2);
            p->off = 18;
        }
    }
    if (proto == bpf_htons(FT_ETH_P_IP)) {
        u8 ip[20];
        if (hdr(skb, p->off, ip, 20) != 0)
            return FT_PKT_L3_TRUNCATED;
        p->family = 4;
        p->ip_hlen = (ip[0] & 0x0f) * 4;
        p->ip_len = ((u32)ip[2] << 8) | ip[3];
        p->first_fragment = (((u32)(ip[6] & 0x1f) << 8) | ip[7]) == 0;
        p->l4proto = ip[9];
        __builtin_memcpy(p->saddr, ip + 12, 4);
        __builtin_memcpy(p->daddr, ip + 16, 4);
        return FT_PKT_OK;
    }
    if (proto == bpf_htons(FT_ETH_P_IPV6)) {
        u8 ip6[40];
        if (hdr(skb, p->off, ip6, 40) != 0)
            return FT_PKT_L3_TRUNCATED;
        p->family = 6;
        p->ip_hlen = 40;
        p->ip_len = 40 + (((u32)ip6[4] << 8) | ip6[5]);
        p->first_fragment = 1;
        p->l4proto = ip6[6];
        __builtin_memcpy(p->saddr, ip6 + 8, 16);
        __builtin_memcpy(p->daddr, ip6 + 24, 16);
        return FT_PKT_OK;
    }
    return FT_PKT_NOT_IP;
}

/* A TCP flow followed for L7 (one entry per direction). */
struct l7_flow_key {
    u8 saddr[16];
    u8 daddr[16];
    u16 sport;
    u16 dport;
    u8 family;
    u8 _pad0[3];
};

struct l7_flow {
    u8 kind;               /* FT_L7_HTTP or FT_L7_TLS_HELLO */
    u8 from_client;        /* this direction is client -> server */
    u8 skipping;           /* FT_L7_HTTP: user space asked to skip body bytes up to skip_end */
    u8 _pad0;
    u32 budget;            /* FT_L7_TLS_HELLO: ClientHello bytes still to send */
    u32 skip_end;          /* sequence number where that body ends (the next head may start there) */
    u32 _pad1;
};

#define FT_L7_CTR_RINGBUF_FULL 0   /* events the ring buffer had no room for */
#define FT_L7_CTR_TRACK_FULL 1     /* flows not followed: the flow map was full */
#define FT_L7_CTR_TRUNCATED 2      /* IP/TCP header unreadable */
#define FT_L7_CTR_SSL_NO_SOCKET 3  /* SSL calls whose socket was never seen (sent with skaddr 0) */
#define FT_L7_CTR_SHED 4           /* HTTP segments not starting a head, sent without their bytes: the ring was over half full */
#define FT_L7_CTR_WIRE_FULL 5      /* trace contexts not deduplicated: the map of flows' last one was full (sent anyway) */
#define FT_L7_CTR_N 6

#endif
