#!/bin/sh
# Prepare a Debian host to run flowtape's recorder and its eBPF tests. Idempotent: every
# step checks first and says what it did. Usage: scripts/setup-host.sh [VENV]
#   - installs missing Debian packages (only as root on Debian);
#   - links kernel headers under /lib/modules/$(uname -r)/ when that kernel has none
#     (bcc compiles our C against them; only UAPI types are used, so a nearby version works);
#   - mounts debugfs/tracefs when missing (bcc finds tracepoints there);
#   - makes the Debian `bcc` module importable from VENV (a .pth file).
set -u
VENV="${1:-}"
say() { echo "setup-host: $*"; }
is_root() { [ "$(id -u)" = 0 ]; }
is_debian() { [ -f /etc/debian_version ] && command -v apt-get >/dev/null 2>&1; }

# --- packages: "package:probe" where probe is a command, or dpkg:<name> --------------------
WANT="bpfcc-tools:dpkg:bpfcc-tools python3-bpfcc:dpkg:python3-bpfcc libbpfcc:dpkg:libbpfcc
linux-headers-amd64:dpkg:linux-headers-amd64 nginx:nginx curl:curl wrk:wrk nghttp2-client:h2load dnsmasq:dnsmasq
dnsutils:dig tcpdump:tcpdump tshark:tshark iproute2:ip openssl:openssl graphviz:dot ethtool:ethtool chromium:chromium
golang-go:go podman:podman runc:runc mmdebstrap:mmdebstrap uidmap:newuidmap openjdk-17-jre-headless:dpkg:openjdk-17-jre-headless"
missing=""
for item in $WANT; do
    pkg=${item%%:*}; probe=${item#*:}
    case "$probe" in
        dpkg:*) dpkg-query -W -f='${Status}' "${probe#dpkg:}" 2>/dev/null | grep -q "ok installed" || missing="$missing $pkg" ;;
        *) command -v "$probe" >/dev/null 2>&1 || [ -x "/usr/sbin/$probe" ] || missing="$missing $pkg" ;;
    esac
done
if [ -z "$missing" ]; then
    say "packages: all present"
elif is_root && is_debian; then
    say "packages: installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    # tshark asks whether non-root users may capture; answer no without a prompt.
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections 2>/dev/null || true
    apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends $missing >/dev/null \
        && say "packages: installed$missing" || { say "packages: apt-get install failed for$missing"; exit 1; }
    # nginx's package starts a system instance on :80; the tests run their own.
    if command -v systemctl >/dev/null 2>&1; then systemctl disable --now nginx >/dev/null 2>&1 || true; fi
else
    say "packages: missing$missing (run as root on Debian to install them)"
fi

# --- kernel headers ----------------------------------------------------------------------
KREL=$(uname -r)
MOD="/lib/modules/$KREL"
if [ -e "$MOD/build/include" ]; then
    say "headers: $MOD/build present"
elif is_root; then
    # Newest installed Debian header pair: linux-headers-<v>-<arch> (build) and -common (source).
    build=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -1)
    if [ -n "$build" ]; then
        common="${build%-amd64}-common"
        mkdir -p "$MOD"
        ln -sfn "$build" "$MOD/build"
        [ -d "$common" ] && ln -sfn "$common" "$MOD/source"
        say "headers: linked $MOD/build -> $build${common:+, source -> $common}"
    else
        say "headers: none under /usr/src (install linux-headers-amd64, or set BCC_KERNEL_SOURCE)"
    fi
else
    say "headers: $MOD/build missing (run as root to link it)"
fi

# --- tracefs -------------------------------------------------------------------------------
if [ -d /sys/kernel/debug/tracing/events ]; then
    say "tracefs: mounted"
elif is_root; then
    mountpoint -q /sys/kernel/debug || mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
    [ -d /sys/kernel/debug/tracing/events ] || mount -t tracefs tracefs /sys/kernel/debug/tracing 2>/dev/null
    [ -d /sys/kernel/tracing/events ] || mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
    [ -d /sys/kernel/debug/tracing/events ] && say "tracefs: mounted under /sys/kernel/debug/tracing" || say "tracefs: could not mount"
else
    say "tracefs: not mounted (run as root)"
fi

# --- bcc in the virtualenv -------------------------------------------------------------------
if [ -n "$VENV" ]; then
    py="$VENV/bin/python"
    if [ ! -x "$py" ]; then
        say "bcc: $py not found; skipped"
    elif "$py" -c "import bcc" 2>/dev/null; then
        say "bcc: importable from $VENV"
    else
        dist=$(/usr/bin/python3 -c "import bcc, os; print(os.path.dirname(os.path.dirname(bcc.__file__)))" 2>/dev/null)
        site=$("$py" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
        if [ -n "$dist" ] && [ -d "$site" ]; then
            # Only bcc: a .pth adding all of dist-packages would shadow the venv's own packages.
            mkdir -p "$site/_flowtape_sys_bcc" && ln -sfn "$dist/bcc" "$site/_flowtape_sys_bcc/bcc"
            echo "$site/_flowtape_sys_bcc" > "$site/flowtape-system-bcc.pth"
            "$py" -c "import bcc" 2>/dev/null && say "bcc: linked $dist/bcc into $VENV" || say "bcc: link made but import still fails"
        else
            say "bcc: the system python3 cannot import bcc (apt-get install python3-bpfcc)"
        fi
    fi
fi
exit 0
