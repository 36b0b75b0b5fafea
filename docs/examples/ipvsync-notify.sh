#!/bin/sh
# keepalived notify script: tell ipvsync (vip_mode: external) whether this node owns the VIPs.
# keepalived calls it as:  ipvsync-notify.sh TYPE NAME STATE PRIORITY
# ipvsync reads the file about once a second: anything but MASTER pauses health-check side effects
# (weights/removals stay as they were, like keepalived's ha_suspend); MASTER resumes them.
# A missing or empty file counts as MASTER. Do not put it in /tmp (ipvsync runs with PrivateTmp).
set -eu
STATE_FILE=/run/ipvsync-vrrp.state
state=${3:-FAULT}
case "$state" in
  MASTER|BACKUP|FAULT) ;;
  STOP) state=BACKUP ;;              # keepalived stopping: the VIPs are gone from this node
  *) state=FAULT ;;
esac
tmp="$STATE_FILE.$$"
printf '%s\n' "$state" > "$tmp"
mv -f "$tmp" "$STATE_FILE"           # atomic: ipvsync never reads a half-written file
