#!/bin/bash
# Runs INSIDE the booted Debian 12 (UML, systemd as PID 1) as ipvsync-e2e.service, after the
# installed ipvsync.service has started with the package's stub config. Writes one line per check
# to /e2e/results ("PASS name" / "FAIL name: why"), then "DONE", then powers off.
# Everything here happens in the guest's own root (the test's scratch copy of the rootfs) and in
# network namespaces of the UML kernel: no host file outside that copy is touched.
set -u
export LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
R=/e2e/results
CONF=/etc/ipvsync/ipvsync.yaml
: > "$R"
pass() { echo "PASS $1" >> "$R"; echo "e2e: PASS $1"; }
fail() { echo "FAIL $1: $2" | tr '\n' ' ' >> "$R"; echo >> "$R"; echo "e2e: FAIL $1: $2"; }
check() { local name=$1; shift; local out; if out=$("$@" 2>&1); then pass "$name"; else fail "$name" "$out"; fi; }
finish() { echo DONE >> "$R"; sync; systemctl --force poweroff; exit 0; }
# ipvsadm -Sn, sorted, without the service-level timeouts line differences
ipvs_now() { ipvsadm -Sn | sed 's/[[:space:]]*$//' | sort; }
wait_for() { # wait_for SECONDS CMD...: poll until CMD succeeds
	local end=$((SECONDS + $1)); shift
	until "$@" >/dev/null 2>&1; do [ $SECONDS -ge $end ] && return 1; sleep 0.5; done
}
ipvs_is() { [ "$(ipvs_now)" = "$(printf '%s\n' "$@" | sort)" ] || { echo "want:"; printf '%s\n' "$@" | sort; echo "have:"; ipvs_now; return 1; }; }

# -- 0. the package as installed: the stub starts and does nothing ------------------------------
wait_for 60 sh -c '[ "$(systemctl is-active ipvsync)" = active ] || [ "$(systemctl is-active ipvsync)" = failed ]'
check boot-stub-active test "$(systemctl is-active ipvsync)" = active
check boot-stub-empty ipvs_is ""
check ipvsync-check-debian-python /usr/bin/ipvsync check -c "$CONF"
check debian-python-is-used sh -c 'head -1 /usr/bin/ipvsync | grep -qx "#!/usr/bin/python3" && python3 -c "import ipvsync, sys; assert ipvsync.__file__.startswith(\"/usr/lib/python3/dist-packages/\"), ipvsync.__file__"'
check modules-load-ip_vs sh -c 'grep -q "^ip_vs " /proc/modules'
score=$(systemd-analyze security ipvsync.service --no-pager 2>&1 | sed -n 's/.*Overall exposure level for ipvsync.service: \([0-9.]*\).*/\1/p')
echo "INFO exposure $score" >> "$R"
check exposure-le-2.5 python3 -c "import sys; sys.exit(0 if float('${score:-99}') <= 2.5 else 1)"

# -- network: a director (this namespace), two real servers and a client, all veth ------------
ip link set lo up
mk_ns() { # mk_ns NAME HOSTADDR NSADDR
	ip netns add "$1"; ip link add "h-$1" type veth peer name eth0 netns "$1"
	ip addr add "$2/24" dev "h-$1"; ip link set "h-$1" up
	ip -n "$1" addr add "$3/24" dev eth0; ip -n "$1" link set eth0 up; ip -n "$1" link set lo up
	ip -n "$1" route add default via "$2"
}
mk_ns rs1 198.51.100.1 198.51.100.11
mk_ns rs2 198.51.101.1 198.51.101.12
mk_ns client 203.0.113.1 203.0.113.2
for ns in rs1 rs2; do
	mkdir -p "/e2e/www-$ns"; echo "hello from $ns" > "/e2e/www-$ns/index.html"
	ip netns exec "$ns" python3 -m http.server 8080 --bind 0.0.0.0 --directory "/e2e/www-$ns" >/dev/null 2>&1 &
done
wait_for 20 ip netns exec rs1 python3 -c 'import socket; socket.create_connection(("198.51.100.11", 8080), 1)'
wait_for 20 ip netns exec rs2 python3 -c 'import socket; socket.create_connection(("198.51.101.12", 8080), 1)'

write_conf() { # write_conf WEIGHT2 [EXTRA_RS]
	cat > "$CONF.tmp" <<YAML
version: 1
vip_interface: ipvsync0
sysctls:
  net.ipv4.ip_forward: 1
services:
  web:
    vip: 192.0.2.10
    port: 80
    scheduler: wrr
    real_servers:
      - 198.51.100.11:8080
      - {address: 198.51.101.12, port: 8080, weight: $1}
$2
YAML
	mv "$CONF.tmp" "$CONF"
}
BASE=("-A -t 192.0.2.10:80 -s wrr" "-a -t 192.0.2.10:80 -r 198.51.100.11:8080 -m -w 1")

# -- 1. systemctl start with a real config ------------------------------------------------------
systemctl stop ipvsync
write_conf 3 ""
check start-rc systemctl start ipvsync
check start-active test "$(systemctl is-active ipvsync)" = active
check start-ipvsadm ipvs_is "${BASE[@]}" "-a -t 192.0.2.10:80 -r 198.51.101.12:8080 -m -w 3"
check start-vip-bound sh -c 'ip -o addr show dev ipvsync0 | grep -q "192.0.2.10/"'
check start-sysctl-ip_forward test "$(cat /proc/sys/net/ipv4/ip_forward)" = 1
# the sandbox is in force (UML's kernel supports what the unit asks for) and does not get in the way
pid=$(systemctl show -p MainPID --value ipvsync)
echo "INFO sandbox $(grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/$pid/status | tr -s '\t\n' '  ')" >> "$R"
check sandbox-capabilities grep -qx "CapBnd:[[:space:]]*00000000000030e0" /proc/$pid/status
check sandbox-no-new-privs grep -qx "NoNewPrivs:[[:space:]]*1" /proc/$pid/status
check sandbox-read-only-etc sh -c "! nsenter -t $pid -m touch /etc/ipvsync-e2e-probe 2>/dev/null && test ! -e /etc/ipvsync-e2e-probe"
# wrr was not loaded before: the kernel loaded it on demand despite ProtectKernelModules=yes
check scheduler-module-loaded-on-demand grep -q "^ip_vs_wrr " /proc/modules
check start-traffic ip netns exec client python3 -c '
import urllib.request; body = urllib.request.urlopen("http://192.0.2.10/", timeout=3).read()
assert body.startswith(b"hello from rs"), body'

# -- 2. an edit is applied with no command (the daemon watches the file) -------------------------
write_conf 5 ""
check edit-applied-without-command wait_for 20 ipvs_is "${BASE[@]}" "-a -t 192.0.2.10:80 -r 198.51.101.12:8080 -m -w 5"

# -- 3. systemctl reload applies, synchronously ----------------------------------------------------
write_conf 7 ""
check reload-rc systemctl reload ipvsync
check reload-applied ipvs_is "${BASE[@]}" "-a -t 192.0.2.10:80 -r 198.51.101.12:8080 -m -w 7"

# -- 4. a broken edit: reload fails with FILE:LINE, the service keeps the old state ---------------
since=$(date '+%Y-%m-%d %H:%M:%S')
sleep 1
write_conf 7 "      - {address: 198.51.100.13, port: 99999}"
bad_line=$(grep -n 99999 "$CONF" | cut -d: -f1)
out=$(systemctl reload ipvsync 2>&1); rc=$?
check broken-reload-fails test "$rc" -ne 0
check broken-still-active test "$(systemctl is-active ipvsync)" = active
check broken-old-state-kept ipvs_is "${BASE[@]}" "-a -t 192.0.2.10:80 -r 198.51.101.12:8080 -m -w 7"
sleep 1
check broken-journal-file-line sh -c "journalctl -u ipvsync --since '$since' --no-pager -o cat | grep -F '$CONF:$bad_line'"

# -- 5. structured journal fields -----------------------------------------------------------------
check journal-vip-field sh -c "journalctl -u ipvsync -o json --no-pager | grep -q '\"VIP\":\"192.0.2.10'"
check journal-real-server-field sh -c "journalctl -u ipvsync -o json --no-pager | grep -q '\"REAL_SERVER\":'"

# -- 6. restart under load: no failed connection ----------------------------------------------------
write_conf 7 ""
check restored-reload systemctl reload ipvsync
cat > /e2e/client.py <<'PY'
import socket, sys, time
deadline = time.monotonic() + float(sys.argv[1])
ok = failed = 0
errors = {}
while time.monotonic() < deadline:
    try:
        with socket.create_connection(("192.0.2.10", 80), timeout=3) as s:
            s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        if data.startswith(b"HTTP/1.0 200") and b"hello from rs" in data:
            ok += 1
        else:
            failed += 1; errors["bad reply"] = errors.get("bad reply", 0) + 1
    except OSError as exc:
        failed += 1; errors[str(exc)] = errors.get(str(exc), 0) + 1
print(f"ok={ok} failed={failed} errors={errors}")
PY
ip netns exec client python3 /e2e/client.py 12 > /e2e/client.out 2>&1 &
client=$!
sleep 3
check restart-rc systemctl restart ipvsync
wait "$client"
echo "INFO client $(cat /e2e/client.out)" >> "$R"
check restart-zero-failed-connections sh -c 'grep -q "failed=0 " /e2e/client.out && ! grep -q "ok=0 " /e2e/client.out'
check restart-active test "$(systemctl is-active ipvsync)" = active
check restart-state ipvs_is "${BASE[@]}" "-a -t 192.0.2.10:80 -r 198.51.101.12:8080 -m -w 7"

# -- 6b. an invalid config at (re)start: ExecStartPre fails with FILE:LINE, the kernel keeps serving --
since=$(date '+%Y-%m-%d %H:%M:%S')
sleep 1
write_conf 7 "      - {address: 198.51.100.13, port: 99999}"
bad_line=$(grep -n 99999 "$CONF" | cut -d: -f1)
out=$(systemctl restart ipvsync 2>&1); rc=$?
check invalid-start-fails test "$rc" -ne 0
check invalid-start-journal-file-line sh -c "journalctl -u ipvsync --since '$since' --no-pager -o cat | grep -F '$CONF:$bad_line'"
check invalid-start-kernel-kept ipvs_is "${BASE[@]}" "-a -t 192.0.2.10:80 -r 198.51.101.12:8080 -m -w 7"
write_conf 7 ""
systemctl reset-failed ipvsync 2>/dev/null
check fixed-start-rc systemctl start ipvsync
check fixed-start-active test "$(systemctl is-active ipvsync)" = active

# -- 7. remove keeps the kernel state; purge removes config and state --------------------------------
check remove-rc sh -c 'DEBIAN_FRONTEND=noninteractive dpkg --remove ipvsync'
check remove-stopped sh -c '! systemctl is-active --quiet ipvsync'
check remove-kernel-state-kept ipvs_is "${BASE[@]}" "-a -t 192.0.2.10:80 -r 198.51.101.12:8080 -m -w 7"
check remove-keeps-conffile test -f "$CONF"
check purge-rc sh -c 'DEBIAN_FRONTEND=noninteractive dpkg --purge ipvsync'
check purge-removes-config-and-state sh -c '! test -e /etc/ipvsync && ! test -e /var/lib/ipvsync'

finish
