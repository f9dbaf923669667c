/* TCP connection lifecycle for flowtape's `connections` table.
 *
 * Stable ABI only (see DESIGN.md): tracepoint arguments and struct bpf_sock_ops. No kernel
 * struct is read by offset; the socket address from the tracepoint is an opaque identity.
 *
 *  sock_ops (cgroup v2 root)     asks for STATE_CB on every TCP socket it sees connect or
 *                                 establish, and at each state change leaves the socket's
 *                                 counters (bytes, segments, srtt, retransmits, cookie) in a
 *                                 per-CPU slot.
 *  sock:inet_sock_set_state      runs right after that callback, on the same CPU, in the same
 *                                 call (tcp_set_state); it takes the slot when the 4-tuple and
 *                                 states match. It follows each endpoint in a map (ft_socks) and
 *                                 sends one event per endpoint, at CLOSE, with everything its row
 *                                 needs. At CLOSE->SYN_SENT it runs inside connect(): pid/comm/
 *                                 cgroup of the client are the caller's. Endpoints still open at
 *                                 the end are read from ft_socks by user space.
 *  cgroup getpeername4/6         the server's owner: accept() asks for the peer's address
 *                                 (getname with peer=2), which runs these hooks in the
 *                                 accepting process, with that address; the socket is found by
 *                                 it in ft_peers and the owner written into ft_socks (no event).
 *  syscalls:sys_*_accept[4]      the same from the syscall's exit, where the cgroup hooks are
 *                                 not available (before Linux 5.8, no cgroup v2). Avoided when
 *                                 possible: a syscall tracepoint sends every syscall of every
 *                                 process through the slow path (+58 ns each, measured).
 *  sock:sock_{send,recv}_length  opt-in (FT_OWNER_FALLBACK) fallback owner for server sockets
 *                                 accepted without a peer address: the first process that reads
 *                                 or writes them. Off by default: it runs on every send and recv.
 *  sock:inet_sk_error_report     why a connect failed (ECONNREFUSED, ETIMEDOUT, ...).
 *
 * Optional parts are compiled only when user space found their tracepoint (FT_HAVE_*).
 */
#include "events.h"

#define FT_AF_INET 2
#define FT_AF_INET6 10
#define FT_IPPROTO_TCP 6

/* TCP states as in include/net/tcp_states.h (a UAPI-stable numbering, also BPF_TCP_*). */
#define FT_TCP_ESTABLISHED 1
#define FT_TCP_SYN_SENT 2
#define FT_TCP_SYN_RECV 3
#define FT_TCP_FIN_WAIT1 4
#define FT_TCP_FIN_WAIT2 5
#define FT_TCP_CLOSE 7
#define FT_TCP_CLOSE_WAIT 8
#define FT_TCP_LAST_ACK 9
#define FT_TCP_CLOSING 11
#define FT_TCP_LISTEN 10
#define FT_TCP_NEW_SYN_RECV 12

/* bpf_sock_ops ops and flags (uapi/linux/bpf.h). */
#define FT_SOCK_OPS_ACTIVE_ESTABLISHED_CB 4
#define FT_SOCK_OPS_PASSIVE_ESTABLISHED_CB 5
#define FT_SOCK_OPS_TCP_CONNECT_CB 3
#define FT_SOCK_OPS_STATE_CB 10
#define FT_SOCK_OPS_STATE_CB_FLAG 4
#define FT_RB_NO_WAKEUP 1   /* BPF_RB_NO_WAKEUP */

BPF_RINGBUF_OUTPUT(ft_conn_events, FT_RINGBUF_PAGES);
BPF_PERCPU_ARRAY(ft_conn_lost, u64, 1);   /* events the ring buffer had no room for */

static __always_inline void emit(struct conn_event *ev) {
    /* No wake-up: user space consumes every poll interval (100 ms) anyway, and a wake-up per
     * event (an irq_work, then an epoll return and a syscall per batch of one or two) costs more
     * than the event. 8 MiB hold ~36k events: 100 ms at 360k endpoints/s. */
    if (ft_conn_events.ringbuf_output(ev, sizeof(*ev), FT_RB_NO_WAKEUP) != 0) {
        u32 zero = 0;
        u64 *lost = ft_conn_lost.lookup(&zero);
        if (lost)
            *lost += 1;   /* per-CPU: no other writer */
    }
}

/* ---- sock_ops: counters at each state change ------------------------------------------ */

struct sockops_slot {
    u64 cookie;
    u64 bytes_acked;
    u64 bytes_received;
    u32 segs_out;
    u32 segs_in;
    u32 srtt_us;
    u32 total_retrans;
    u32 snd_una;
    u32 snd_nxt;
    u32 local_ip[4];
    u32 remote_ip[4];
    u16 local_port;
    u16 remote_port;
    u8 oldstate;
    u8 newstate;
    u8 valid;
    u8 _pad0;
};
BPF_PERCPU_ARRAY(ft_sockops_slot, struct sockops_slot, 1);

int ft_sockops(struct bpf_sock_ops *skops) {
    u32 op = skops->op;
    if (op == FT_SOCK_OPS_TCP_CONNECT_CB || op == FT_SOCK_OPS_ACTIVE_ESTABLISHED_CB ||
        op == FT_SOCK_OPS_PASSIVE_ESTABLISHED_CB) {
        bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | FT_SOCK_OPS_STATE_CB_FLAG);
        return 1;
    }
    if (op != FT_SOCK_OPS_STATE_CB)
        return 1;
    u32 newstate = skops->args[1];
    if (newstate != FT_TCP_ESTABLISHED && newstate != FT_TCP_FIN_WAIT2 && newstate != FT_TCP_CLOSE)
        return 1;   /* inet_sock_set_state takes the counters only at these */
    u32 zero = 0;
    struct sockops_slot *s = ft_sockops_slot.lookup(&zero);
    if (!s)
        return 1;
    s->valid = 0;
    u32 family = skops->family;
    if (family == FT_AF_INET) {
        s->local_ip[0] = skops->local_ip4;
        s->remote_ip[0] = skops->remote_ip4;
        s->local_ip[1] = s->local_ip[2] = s->local_ip[3] = 0;
        s->remote_ip[1] = s->remote_ip[2] = s->remote_ip[3] = 0;
    } else if (family == FT_AF_INET6) {
        s->local_ip[0] = skops->local_ip6[0];
        s->local_ip[1] = skops->local_ip6[1];
        s->local_ip[2] = skops->local_ip6[2];
        s->local_ip[3] = skops->local_ip6[3];
        s->remote_ip[0] = skops->remote_ip6[0];
        s->remote_ip[1] = skops->remote_ip6[1];
        s->remote_ip[2] = skops->remote_ip6[2];
        s->remote_ip[3] = skops->remote_ip6[3];
    } else {
        return 1;
    }
    s->local_port = skops->local_port;                 /* host order */
    s->remote_port = bpf_ntohl(skops->remote_port);    /* network order, in the high half */
    s->oldstate = skops->args[0];
    s->newstate = skops->args[1];
    s->cookie = bpf_get_socket_cookie(skops);
    s->bytes_acked = skops->bytes_acked;
    s->bytes_received = skops->bytes_received;
    s->segs_out = skops->segs_out;
    s->segs_in = skops->segs_in;
    s->srtt_us = skops->srtt_us >> 3;
    s->total_retrans = skops->total_retrans;
    s->snd_una = skops->snd_una;
    s->snd_nxt = skops->snd_nxt;
    s->valid = 1;
    return 1;
}

/* The slot when it describes this very state change of this socket, else NULL. */
static __always_inline struct sockops_slot *slot_for(const void *saddr, const void *daddr, u16 sport, u16 dport,
                                                     int oldstate, int newstate) {
    u32 zero = 0;
    struct sockops_slot *s = ft_sockops_slot.lookup(&zero);
    if (!s || !s->valid)
        return 0;
    if (s->oldstate != oldstate || s->newstate != newstate || s->local_port != sport || s->remote_port != dport)
        return 0;
    u32 la[4], ra[4];
    __builtin_memcpy(la, saddr, 16);
    __builtin_memcpy(ra, daddr, 16);
    if (la[0] != s->local_ip[0] || la[1] != s->local_ip[1] || la[2] != s->local_ip[2] || la[3] != s->local_ip[3] ||
        ra[0] != s->remote_ip[0] || ra[1] != s->remote_ip[1] || ra[2] != s->remote_ip[2] || ra[3] != s->remote_ip[3])
        return 0;
    s->valid = 0;
    return s;
}

/* ---- state changes -------------------------------------------------------------------- */

/* Live TCP endpoints seen from their start: skaddr -> what their rows need. Only CLOSE is sent
 * to user space (with all of it); the steps before update this map, and user space reads it for
 * the endpoints still open when recording stops. */
BPF_HASH(ft_socks, u64, struct sock_info, FT_SOCK_ENTRIES);
BPF_PERCPU_ARRAY(ft_conn_ctr, u64, 2);   /* 0: map full (endpoint not followed), 1: seen only mid-life */

/* Server sockets established and not accepted yet, by the peer's address (what accept() hands
 * the process): peer -> skaddr. accept()'s exit fills the owner into ft_socks. */
struct peer_key {
    u8 addr[16];
    u16 port;              /* host order */
    u16 family;
    u32 _pad0;
};
BPF_HASH(ft_peers, struct peer_key, u64, FT_UNOWNED_ENTRIES);

#ifdef FT_OWNER_FALLBACK
/* Server sockets established but not owned yet: skaddr -> 1 (the first send/recv owns them). */
BPF_HASH(ft_unowned, u64, u8, FT_UNOWNED_ENTRIES);
#endif

static __always_inline void conn_ctr(u32 which) {
    u64 *c = ft_conn_ctr.lookup(&which);
    if (c)
        *c += 1;
}

static __always_inline void own(struct sock_info *info) {
    info->pid = bpf_get_current_pid_tgid() >> 32;
    info->cgroup_id = bpf_get_current_cgroup_id();
    bpf_get_current_comm(&info->comm, sizeof(info->comm));
}

TRACEPOINT_PROBE(sock, inet_sock_set_state) {
    if (args->protocol != FT_IPPROTO_TCP)
        return 0;
    int oldstate = args->oldstate, newstate = args->newstate;
    /* Listeners and request sockets are not connections. */
    if (oldstate == FT_TCP_LISTEN || newstate == FT_TCP_LISTEN || newstate == FT_TCP_NEW_SYN_RECV ||
        newstate == FT_TCP_SYN_RECV)
        return 0;
    u64 key = (u64)args->skaddr;

    if (oldstate == FT_TCP_CLOSE && newstate == FT_TCP_SYN_SENT) {
        /* Inside connect(): the caller owns the socket. Port not assigned yet. */
        struct sock_info fresh = {};
        fresh.ts_start_ns = bpf_ktime_get_ns();
        own(&fresh);
        fresh.flags = FT_F_CLIENT;
        if (ft_socks.update(&key, &fresh) != 0)
            conn_ctr(0);
        return 0;
    }

    /* Steps that only set a flag need neither the addresses nor the counters. */
    if (newstate == FT_TCP_FIN_WAIT1 || newstate == FT_TCP_LAST_ACK || newstate == FT_TCP_CLOSING ||
        newstate == FT_TCP_CLOSE_WAIT) {
        struct sock_info *info = ft_socks.lookup(&key);
        if (!info)
            return 0;
        if (newstate != FT_TCP_CLOSE_WAIT)
            info->flags |= FT_F_FIN_SENT;
        if (newstate == FT_TCP_CLOSE_WAIT || newstate == FT_TCP_CLOSING)
            info->flags |= FT_F_FIN_IN;
        return 0;
    }

    u32 saddr[4] = {}, daddr[4] = {};   /* read word by word: each load at a constant ctx offset */
    u16 family = args->family;
    if (family == FT_AF_INET) {
        saddr[0] = *(volatile u32 *)args->saddr;
        daddr[0] = *(volatile u32 *)args->daddr;
    } else {
        saddr[0] = *(volatile u32 *)&args->saddr_v6[0];
        saddr[1] = *(volatile u32 *)&args->saddr_v6[4];
        saddr[2] = *(volatile u32 *)&args->saddr_v6[8];
        saddr[3] = *(volatile u32 *)&args->saddr_v6[12];
        daddr[0] = *(volatile u32 *)&args->daddr_v6[0];
        daddr[1] = *(volatile u32 *)&args->daddr_v6[4];
        daddr[2] = *(volatile u32 *)&args->daddr_v6[8];
        daddr[3] = *(volatile u32 *)&args->daddr_v6[12];
    }
    u16 sport = args->sport, dport = args->dport;

    if (newstate == FT_TCP_ESTABLISHED) {
        u64 now = bpf_ktime_get_ns();
        struct sockops_slot *s = slot_for(saddr, daddr, sport, dport, oldstate, newstate);
        if (oldstate == FT_TCP_SYN_RECV) {
            /* A server endpoint: inserted complete, in one update. */
            struct sock_info fresh = {};
            fresh.ts_start_ns = now;
            fresh.ts_established_ns = now;
            __builtin_memcpy(fresh.saddr, saddr, 16);
            __builtin_memcpy(fresh.daddr, daddr, 16);
            fresh.sport = sport;
            fresh.dport = dport;
            fresh.family = family;
            if (s)
                fresh.cookie = s->cookie;
            if (ft_socks.update(&key, &fresh) != 0) {
                conn_ctr(0);
                return 0;
            }
            struct peer_key peer = {};
            __builtin_memcpy(peer.addr, daddr, 16);
            peer.port = dport;
            peer.family = family;
            ft_peers.update(&peer, &key);
#ifdef FT_OWNER_FALLBACK
            u8 one = 1;
            ft_unowned.update(&key, &one);
#endif
            return 0;
        }
        struct sock_info *info = ft_socks.lookup(&key);
        if (!info)
            return 0;
        info->ts_established_ns = now;
        __builtin_memcpy(info->saddr, saddr, 16);
        __builtin_memcpy(info->daddr, daddr, 16);
        info->sport = sport;
        info->dport = dport;
        info->family = family;
        if (s)
            info->cookie = s->cookie;
        return 0;
    }

    struct sock_info *info = ft_socks.lookup(&key);
    if (!info) {
        if (newstate == FT_TCP_CLOSE)
            conn_ctr(1);   /* started before recording (or not followed) */
        return 0;
    }
    if (newstate == FT_TCP_FIN_WAIT2) {
        struct sockops_slot *s = slot_for(saddr, daddr, sport, dport, oldstate, newstate);
        if (s) {
            info->rx_at_fin_wait2_b = s->bytes_received;
            info->flags |= FT_F_FIN_WAIT2;
        }
    }
    if (newstate != FT_TCP_CLOSE)
        return 0;

    struct conn_event ev = {};
    ev.kind = FT_EV_STATE;
    ev.ts_ns = bpf_ktime_get_ns();
    ev.skaddr = key;
    ev.oldstate = oldstate;
    ev.newstate = newstate;
    ev.family = family;
    ev.sport = sport;
    ev.dport = dport;
    __builtin_memcpy(ev.saddr, saddr, 16);
    __builtin_memcpy(ev.daddr, daddr, 16);
    struct sockops_slot *s = slot_for(saddr, daddr, sport, dport, oldstate, newstate);
    if (s) {
        ev.cookie = s->cookie;
        ev.bytes_acked = s->bytes_acked;
        ev.bytes_received = s->bytes_received;
        ev.segs_out = s->segs_out;
        ev.segs_in = s->segs_in;
        ev.srtt_us = s->srtt_us;
        ev.total_retrans = s->total_retrans;
        ev.snd_una = s->snd_una;
        ev.snd_nxt = s->snd_nxt;
        ev.has_stats = 1;
    } else {
        ev.cookie = info->cookie;
    }
    ev.ts_start_ns = info->ts_start_ns;
    ev.ts_established_ns = info->ts_established_ns;
    ev.rx_at_fin_wait2_b = info->rx_at_fin_wait2_b;
    ev.flags = info->flags;
    if (info->pid) {
        ev.pid = info->pid;
        ev.cgroup_id = info->cgroup_id;
        __builtin_memcpy(ev.comm, info->comm, sizeof(ev.comm));
        ev.in_task = 1;
    }
    if (!(info->flags & (FT_F_CLIENT | FT_F_ACCEPTED))) {
        struct peer_key peer = {};   /* never accepted with its address: forget its peer entry */
        __builtin_memcpy(peer.addr, daddr, 16);
        peer.port = dport;
        peer.family = family;
        u64 *sk = ft_peers.lookup(&peer);
        if (sk && *sk == key)
            ft_peers.delete(&peer);
    }
    ft_socks.delete(&key);
#ifdef FT_OWNER_FALLBACK
    ft_unowned.delete(&key);
#endif
    emit(&ev);
    return 0;
}

/* ---- accept: the server side's owner ------------------------------------------------- */

/* The process running now accepted the server socket of `peer`: it owns it. */
static __always_inline void accepted(struct peer_key *peer) {
    u64 *sk = ft_peers.lookup(peer);
    if (!sk)
        return;   /* not ours, already owned, or a later getpeername() */
    u64 key = *sk;
    ft_peers.delete(peer);
    struct sock_info *info = ft_socks.lookup(&key);
    if (info) {
        info->flags |= FT_F_ACCEPTED;
        if (!info->pid)
            own(info);
    }
#ifdef FT_OWNER_FALLBACK
    ft_unowned.delete(&key);
#endif
}

#ifdef FT_HAVE_GETPEERNAME
/* cgroup/getpeername4 and 6: must return 1 (let the call go on unchanged). */
int ft_getpeername4(struct bpf_sock_addr *ctx) {
    struct peer_key peer = {};
    u32 ip = ctx->user_ip4;
    __builtin_memcpy(peer.addr, &ip, 4);
    peer.port = bpf_ntohs((u16)ctx->user_port);   /* network order in the low half */
    peer.family = FT_AF_INET;
    accepted(&peer);
    return 1;
}

int ft_getpeername6(struct bpf_sock_addr *ctx) {
    struct peer_key peer = {};
    u32 ip[4];
    ip[0] = ctx->user_ip6[0];
    ip[1] = ctx->user_ip6[1];
    ip[2] = ctx->user_ip6[2];
    ip[3] = ctx->user_ip6[3];
    __builtin_memcpy(peer.addr, ip, 16);
    peer.port = bpf_ntohs((u16)ctx->user_port);
    peer.family = FT_AF_INET6;
    accepted(&peer);
    return 1;
}
#endif

#ifdef FT_HAVE_ACCEPT
BPF_HASH(ft_accepting, u64, u64, 10240);   /* thread id -> user sockaddr pointer */

static __always_inline int accept_enter(const void *uaddr) {
    if (!uaddr)
        return 0;   /* no peer address asked for: only the send/recv fallback can attribute it */
    u64 tid = bpf_get_current_pid_tgid();
    u64 ptr = (u64)uaddr;
    ft_accepting.update(&tid, &ptr);
    return 0;
}

/* The process that accept()ed owns the server socket of the peer it was handed (read from its
 * own buffer). */
static __always_inline int accept_exit(long ret) {
    u64 tid = bpf_get_current_pid_tgid();
    u64 *ptr = ft_accepting.lookup(&tid);
    if (!ptr)
        return 0;
    u64 uaddr = *ptr;
    ft_accepting.delete(&tid);
    if (ret < 0)
        return 0;
    struct peer_key peer = {};
    u16 head[2] = {};   /* sa_family, port (network order) */
    if (bpf_probe_read_user(head, sizeof(head), (void *)uaddr) != 0)
        return 0;
    if (head[0] == FT_AF_INET) {
        if (bpf_probe_read_user(peer.addr, 4, (void *)(uaddr + 4)) != 0)
            return 0;
    } else if (head[0] == FT_AF_INET6) {
        if (bpf_probe_read_user(peer.addr, 16, (void *)(uaddr + 8)) != 0)
            return 0;
    } else {
        return 0;   /* unix sockets and friends */
    }
    peer.family = head[0];
    peer.port = bpf_ntohs(head[1]);
    accepted(&peer);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_accept4) { return accept_enter(args->upeer_sockaddr); }
TRACEPOINT_PROBE(syscalls, sys_exit_accept4) { return accept_exit(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_accept) { return accept_enter(args->upeer_sockaddr); }
TRACEPOINT_PROBE(syscalls, sys_exit_accept) { return accept_exit(args->ret); }
#endif

/* ---- first I/O on a server socket: fallback owner (opt-in) ---------------------------- */
#if defined(FT_HAVE_SOCK_LENGTH) && defined(FT_OWNER_FALLBACK)
static __always_inline int first_io(const void *sk) {
    u64 key = (u64)sk;
    if (!ft_unowned.lookup(&key))
        return 0;
    ft_unowned.delete(&key);
    struct sock_info *info = ft_socks.lookup(&key);
    if (info && !info->pid)
        own(info);
    return 0;
}
TRACEPOINT_PROBE(sock, sock_recv_length) { return first_io(args->sk); }
TRACEPOINT_PROBE(sock, sock_send_length) { return first_io(args->sk); }
#endif

/* ---- why a connect failed ------------------------------------------------------------ */
#ifdef FT_HAVE_ERROR_REPORT
TRACEPOINT_PROBE(sock, inet_sk_error_report) {
    if (args->protocol != FT_IPPROTO_TCP)
        return 0;
    struct conn_event ev = {};
    ev.kind = FT_EV_ERROR;
    ev.ts_ns = bpf_ktime_get_ns();
    ev.error = args->error;
    ev.family = args->family;
    ev.sport = args->sport;
    ev.dport = args->dport;
    if (args->family == FT_AF_INET) {
        __builtin_memcpy(ev.saddr, args->saddr, 4);
        __builtin_memcpy(ev.daddr, args->daddr, 4);
    } else {
        __builtin_memcpy(ev.saddr, args->saddr_v6, 16);
        __builtin_memcpy(ev.daddr, args->daddr_v6, 16);
    }
    emit(&ev);
    return 0;
}
#endif
