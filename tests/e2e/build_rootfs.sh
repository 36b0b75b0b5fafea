#!/bin/sh
# Build (or reuse) the cached minimal Debian 12 root filesystem the systemd end-to-end test boots
# under User-Mode Linux. The cache holds the PRISTINE base: Debian's minbase plus systemd and the
# test's own tools; ipvsync and its dependencies are NOT in it, so each test run proves that apt
# resolves them from Debian. Each run copies the base into a scratch dir of its own.
#
#   tests/e2e/build_rootfs.sh [CACHE_DIR]     (default $IPVSYNC_ROOTFS_CACHE or /var/cache/ipvsync-test)
#
# Prints the base dir. Needs root, debootstrap, and the Debian mirror ($IPVSYNC_DEBIAN_MIRROR).
set -eu

cache=${1:-${IPVSYNC_ROOTFS_CACHE:-/var/cache/ipvsync-test}}
mirror=${IPVSYNC_DEBIAN_MIRROR:-http://deb.debian.org/debian}
base="$cache/debian12-rootfs"
# Bump when the package list changes: a base with another stamp is rebuilt.
stamp="v1 bookworm minbase systemd+tools"
include=systemd,systemd-sysv,dbus,kmod,iproute2,ipvsadm,procps,python3,ca-certificates

if [ -f "$base/.ipvsync-rootfs-stamp" ] && [ "$(cat "$base/.ipvsync-rootfs-stamp")" = "$stamp" ]; then
	echo "$base"
	exit 0
fi

command -v debootstrap >/dev/null || { echo "build_rootfs: debootstrap missing (apt-get install debootstrap)" >&2; exit 2; }
mkdir -p "$cache"
tmp="$cache/debian12-rootfs.tmp.$$"
rm -rf "$tmp"
trap 'rm -rf "$tmp"' EXIT
echo "build_rootfs: debootstrap bookworm into $tmp (a few minutes)" >&2
debootstrap --variant=minbase --include="$include" bookworm "$tmp" "$mirror" >&2

# Boot-time settings for UML on hostfs: no getty on the console, no units that need hardware.
echo ipvsync-e2e > "$tmp/etc/hostname"
: > "$tmp/etc/fstab"
for u in systemd-timesyncd.service getty@tty1.service serial-getty@ttyS0.service \
	systemd-networkd-wait-online.service apt-daily.timer apt-daily-upgrade.timer \
	dpkg-db-backup.timer e2scrub_all.timer fstrim.timer; do
	ln -sf /dev/null "$tmp/etc/systemd/system/$u"
done
# debootstrap leaves the mirror in sources.list; keep it (apt install inside the copy uses it).
echo "deb $mirror bookworm main" > "$tmp/etc/apt/sources.list"
rm -f "$tmp/var/cache/apt/archives/"*.deb
echo "$stamp" > "$tmp/.ipvsync-rootfs-stamp"

rm -rf "$base"
mv "$tmp" "$base"
trap - EXIT
echo "$base"
