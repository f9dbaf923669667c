#!/bin/sh
# The image's entry point: find kernel headers for bcc, make sure tracefs is there, run flowtape.
# Headers, first found wins:
#   1. $BCC_KERNEL_SOURCE, when set;
#   2. the host's /lib/modules/$(uname -r)/build (the DaemonSet mounts /lib/modules and /usr/src);
#   3. the kernel's own (CONFIG_IKHEADERS: bcc reads /sys/kernel/kheaders.tar.xz itself);
#   4. the Debian 12 headers in this image (/opt/kernel-headers): the probes use stable-ABI types
#      only, so a nearby kernel version's headers compile them right.
# FLOWTAPE_ONCE=FILE (the DaemonSet's incident mode): run once; after a success FILE is written
# and the container waits, so that the DaemonSet does not restart it into a second recording.
set -u
krel=$(uname -r)
if [ -z "${BCC_KERNEL_SOURCE:-}" ] && [ ! -e "/lib/modules/$krel/build/include" ] && [ ! -e /sys/kernel/kheaders.tar.xz ]; then
    export BCC_KERNEL_SOURCE=/opt/kernel-headers
fi
# tracefs (bcc finds tracepoints under /sys/kernel/debug/tracing): mounted by the DaemonSet;
# mounted here when missing and allowed (CAP_SYS_ADMIN).
if [ ! -d /sys/kernel/debug/tracing/events ]; then
    mountpoint -q /sys/kernel/debug 2>/dev/null || mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
    [ -d /sys/kernel/debug/tracing/events ] || mount -t tracefs tracefs /sys/kernel/debug/tracing 2>/dev/null
fi
if [ -z "${FLOWTAPE_ONCE:-}" ]; then
    exec /opt/flowtape/bin/flowtape "$@"
fi
if [ -e "$FLOWTAPE_ONCE" ]; then
    echo "flowtape: $FLOWTAPE_ONCE exists: this node's recording is finished; waiting (delete the DaemonSet to end)" >&2
    exec sleep infinity
fi
/opt/flowtape/bin/flowtape "$@" &
child=$!
# SIGTERM (a pod deleted) must reach the recorder, which then ends its tape and its upload cleanly
trap 'kill -TERM "$child" 2>/dev/null' TERM INT
wait "$child"; rc=$?
if [ "$rc" -gt 128 ] && kill -0 "$child" 2>/dev/null; then wait "$child"; rc=$?; fi  # woken by the trap
[ "$rc" -eq 0 ] || exit "$rc"
date -u +%Y-%m-%dT%H:%M:%SZ > "$FLOWTAPE_ONCE"
echo "flowtape: recording finished and uploaded; waiting (delete the DaemonSet to end)" >&2
exec sleep infinity
