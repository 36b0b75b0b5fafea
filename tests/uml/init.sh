#!/bin/sh
# PID 1 inside User-Mode Linux for the ipvsync kernel tests.
#
# The host passes IPVSYNC_UML_SHARD_DIR on the kernel command line (the kernel hands unknown
# KEY=VALUE parameters to init as environment). The shard dir holds run.sh (the test command,
# written by tests/uml/plugin.py); we write rc there and power off. Only tmpfs paths and the
# shard dir are written to: the root filesystem is the host's own (hostfs).

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export LANG=C.UTF-8
export IPVSYNC_IN_UML=1
shard=${IPVSYNC_UML_SHARD_DIR:?IPVSYNC_UML_SHARD_DIR not set}

log() { echo "ipvsync-uml-init: $*"; }

mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /dev/shm 2>/dev/null
mkdir -p /run/netns /run/ipvsync /run/ipvsync/home /run/ipvsync/tmp

# Module tree: /run/ipvsync/modules/lib/modules/<ver> -> the UML modules. The on-demand modprobe
# helper reads the current tree from /run/ipvsync/moddir so tests can swap in a faulty tree.
ver=$(uname -r)
mkdir -p /run/ipvsync/modules/lib/modules
ln -s "/usr/lib/uml/modules/$ver" "/run/ipvsync/modules/lib/modules/$ver"
echo /run/ipvsync/modules > /run/ipvsync/moddir
modprobe_bin=$(command -v modprobe)
cat > /run/ipvsync/modprobe <<EOF
#!/bin/sh
exec $modprobe_bin -d "\$(cat /run/ipvsync/moddir)" "\$@"
EOF
chmod 755 /run/ipvsync/modprobe
echo /run/ipvsync/modprobe > /proc/sys/kernel/modprobe

load() { /run/ipvsync/modprobe "$@" || log "modprobe $* failed"; }
load ip_vs
load nf_conntrack
load dummy numdummies=0
load veth
load ipip
load sch_netem
for m in tunnel6 ip6_tunnel; do
    if modprobe -d /run/ipvsync/modules -n "$m" 2>/dev/null; then load "$m"; fi
done
ip link set lo up

export HOME=/run/ipvsync/home TMPDIR=/run/ipvsync/tmp
log "booted $ver; running $shard/run.sh"
sh "$shard/run.sh"
echo $? > "$shard/rc.tmp" && mv "$shard/rc.tmp" "$shard/rc"
sync
poweroff -f
