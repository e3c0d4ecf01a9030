#!/usr/bin/env bash
# Appliance acceptance (issue 6), on this machine under qemu (TCG: /dev/kvm
# does not work here). Builds the ISO and the OVA unless given, then:
#  1. boots the ISO headless, BIOS and UEFI (default menu entry: CX + PS),
#     and times how long until the UI/API answers /api/v1/health through
#     port forwarding;
#  3. unpacks the OVA, verifies the manifest digests, checks the OVF
#     descriptor (well-formed XML, then the envelope's required structure:
#     the DMTF schema is not available offline), checks the VMDKs read as
#     streamOptimized, converts them back and boots them: health answers and
#     the appliance keeps its state on the data disk.
# Usage: appliance-image/test.sh [ISO OVA]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
iso="${1:-}"; ova="${2:-}"
work="$repo/target/appliance/test"
rm -rf "$work"; mkdir -p "$work"
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v xmllint >/dev/null || need+=(libxml2-utils)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  # qemu-system-x86 must match qemu-utils' version (a backport here).
  # Backports come from the mirror this machine already uses for its release.
  codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
  mirror=$(awk -v s="$codename" '
      /^[[:space:]]*$/ { u = "" }
      /^URIs:/ { u = $2 }
      /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == s && u != "") { print u; exit } }
      /^deb[[:space:]]/ { sub(/\[[^]]*\][[:space:]]*/, ""); if ($3 == s) { print $2; exit } }
    ' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null | head -n 1)
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 \
    || { [ -n "$mirror" ] || { echo "no apt source for $codename to take backports from" >&2; exit 1; }
         echo "deb $mirror $codename-backports main" > /etc/apt/sources.list.d/tern-backports.list;
         apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t "$codename-backports" "${need[@]}" >/dev/null; }
fi
if [ -z "$iso" ]; then iso=$("$repo/iso/build.sh"); fi
if [ -z "$ova" ]; then ova=$(TERN_ISO="$iso" TERN_DATA_GIB=4 "$here/build.sh"); fi
fail() { echo "FAIL: $*" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# boot NAME SECONDS QEMU-ARGS...: start qemu, wait for health, print seconds.
boot() {
  local name=$1 limit=$2; shift 2
  local port; port=$(free_port)
  local t0; t0=$(date +%s.%N)
  qemu-system-x86_64 -machine accel=tcg -m 1536 -smp 2 -display none -serial "file:$work/$name.console" \
    -nic "user,model=e1000,hostfwd=tcp:127.0.0.1:$port-:8443" "$@" >"$work/$name.qemu.log" 2>&1 &
  local pid=$!
  echo "$pid" > "$work/$name.pid"
  echo "$port" > "$work/$name.port"
  while :; do
    if curl -sk --max-time 2 "https://127.0.0.1:$port/api/v1/health" > "$work/$name.health" 2>/dev/null \
       && grep -q '"status":"ok"' "$work/$name.health"; then
      break
    fi
    kill -0 "$pid" 2>/dev/null || fail "$name: qemu exited; console: $(tail -20 "$work/$name.console")"
    local el; el=$(echo "$(date +%s.%N) - $t0" | bc)
    if [ "$(echo "$el > $limit" | bc)" = 1 ]; then
      kill "$pid"; fail "$name: no health answer within ${limit}s; console: $(tail -30 "$work/$name.console")"
    fi
    sleep 1
  done
  echo "$(echo "$(date +%s.%N) - $t0" | bc)"
}
stop() { kill "$(cat "$work/$1.pid")" 2>/dev/null || true; wait "$(cat "$work/$1.pid")" 2>/dev/null || true; }

echo "== 1. ISO boots and answers health (TCG)"
secs=$(boot iso 60 -cdrom "$iso" -boot d)
echo "ok: ISO answered /api/v1/health after ${secs}s (BIOS): $(cat "$work/iso.health")"
stop iso
ovmf=/usr/share/ovmf/OVMF.fd
[ -f "$ovmf" ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ovmf >/dev/null
secs=$(boot iso-uefi 90 -bios "$ovmf" -cdrom "$iso" -boot d)
echo "ok: ISO answered /api/v1/health after ${secs}s (UEFI, OVMF)"
stop iso-uefi

echo "== 2. V2P failback target"
# A CX + PS + agent on this host (the guest reaches it at 10.0.2.2); the ISO
# boots in failback mode from a seed CD with a blank disk; a pair from a
# host volume to that disk syncs; then the disk equals the source.
fb="$work/failback"; mkdir -p "$fb/seed"
tern="$repo/target/appliance/iso-work/root/usr/bin/tern"
api=$(free_port); dport=$(free_port); nbd=$(free_port); psport=$(free_port)
cat > "$fb/host.toml" <<TOML
data_dir = "$fb/data"
roles = ["cx", "ps", "agent"]
[node]
name = "src-host"
data_listen = "127.0.0.1:$psport"
tls_names = ["10.0.2.2"]
heartbeat_interval = "2s"
report_interval = "500ms"
[cx]
api_listen = "127.0.0.1:$api"
[[agent.volumes]]
name = "vol"
path = "$fb/src.img"
size = 33554432
listen = "127.0.0.1:$nbd"
TOML
"$tern" serve --config "$fb/host.toml" > "$fb/host.log" 2>&1 &
hostpid=$!
trap 'kill $hostpid 2>/dev/null; stop failback 2>/dev/null' EXIT
t() { "$tern" --data "$fb/data" --json "$@"; }
for _ in $(seq 1 60); do [ -s "$fb/data/cx.url" ] && break; sleep 0.5; done
qemu-io -f raw "nbd://127.0.0.1:$nbd/vol" -c "write -P 0x5a 0 4M" -c "write -P 0xa5 8M 2M" -c "write -z 12M 1M" >/dev/null
token=$(t token create | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
printf 'role=failback\ncx=https://10.0.2.2:%s\ntoken=%s\ndata_port=%s\nhostname=fb-target\n' "$api" "$token" "$dport" > "$fb/seed/tern-seed.conf"
xorriso -as mkisofs -quiet -V TERN_SEED -o "$fb/seed.iso" "$fb/seed"
truncate -s 32M "$fb/disk.raw"
qemu-system-x86_64 -machine accel=tcg -m 1536 -smp 2 -display none -serial "file:$work/failback.console" \
  -nic "user,model=e1000,hostfwd=tcp:127.0.0.1:$dport-:$dport" \
  -drive "file=$iso,media=cdrom,index=0" -drive "file=$fb/seed.iso,media=cdrom,index=1" \
  -drive "file=$fb/disk.raw,format=raw,if=virtio" -boot d >"$work/failback.qemu.log" 2>&1 &
echo $! > "$work/failback.pid"
t0=$(date +%s)
until t host list | python3 -c 'import json,sys; sys.exit(0 if any(h["name"]=="fb-target" and not h["overdue"] for h in json.load(sys.stdin)) else 1)'; do
  [ $(( $(date +%s) - t0 )) -lt 180 ] || fail "the failback target never enrolled; console: $(tail -20 "$work/failback.console")"
  sleep 2
done
echo "ok: the failback target booted, enrolled and heartbeats after $(( $(date +%s) - t0 ))s"
grep -a -A5 "disks that can receive" "$work/failback.console" | tr -d "\r" | grep -a "^/dev/" > "$fb/disks.txt" || true
grep -q "^/dev/vda  32 MiB" "$fb/disks.txt" || fail "the blank disk is not offered: $(cat "$fb/disks.txt")"
grep -Eq "/dev/sr|/dev/hd" "$fb/disks.txt" && fail "the boot medium is offered: $(cat "$fb/disks.txt")"
echo "ok: local disks offered, boot medium excluded: $(tr '\n' ';' < "$fb/disks.txt")"
t pair create fb --source src-host:vol --ps src-host --target fb-target:/dev/vda --retention 1s >/dev/null
qemu-io -f raw "nbd://127.0.0.1:$nbd/vol" -c "write -P 0x11 20M 3M" >/dev/null
t0=$(date +%s)
until qemu-img compare -q -f raw -F raw "$fb/src.img" "$fb/disk.raw" 2>/dev/null; do
  [ $(( $(date +%s) - t0 )) -lt 240 ] || fail "the disk never matched the source; pair: $(t pair show fb)"
  sleep 3
done
echo "ok: qemu-img compare: the failback disk equals the source ($(( $(date +%s) - t0 ))s after the pair was created)"
kill $hostpid; stop failback; trap - EXIT

echo "== 3. OVA"
mkdir -p "$work/ova"; tar -C "$work/ova" -xf "$ova"
order=$(tar -tf "$ova" | tr '\n' ' ')
[ "$order" = "tern.ovf tern.mf tern-system.vmdk tern-data.vmdk " ] || fail "archive order: $order"
(cd "$work/ova" && while read -r line; do
  f=$(echo "$line" | sed 's/^SHA256(\(.*\))= .*/\1/'); want=${line##*= }
  got=$(sha256sum "$f" | cut -d' ' -f1)
  [ "$got" = "$want" ] || { echo "FAIL: digest of $f: $got, manifest says $want" >&2; exit 1; }
  echo "ok: SHA256($f) matches the manifest"
done < tern.mf)
xmllint --noout "$work/ova/tern.ovf" || fail "tern.ovf is not well-formed XML"
python3 - "$work/ova" <<'PY' || fail "OVF structure"
import os, sys, xml.etree.ElementTree as ET
d = sys.argv[1]
O = "{http://schemas.dmtf.org/ovf/envelope/1}"
R = "{http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData}"
env = ET.parse(os.path.join(d, "tern.ovf")).getroot()
assert env.tag == O + "Envelope", env.tag
refs = env.find(O + "References"); assert refs is not None
files = {f.get(O + "id"): f for f in refs.findall(O + "File")}
for fid, f in files.items():
    p = os.path.join(d, f.get(O + "href"))
    assert os.path.exists(p), p
    assert int(f.get(O + "size")) == os.path.getsize(p), (p, f.get(O + "size"))
disks = env.find(O + "DiskSection"); assert disks is not None and disks.find(O + "Info") is not None
ids = set()
for dk in disks.findall(O + "Disk"):
    assert dk.get(O + "fileRef") in files
    assert "streamOptimized" in dk.get(O + "format")
    assert int(dk.get(O + "capacity")) > 0
    ids.add(dk.get(O + "diskId"))
net = env.find(O + "NetworkSection"); assert net is not None and net.find(O + "Network") is not None
vs = env.find(O + "VirtualSystem"); assert vs is not None and vs.get(O + "id")
for sec in ["Info", "ProductSection", "OperatingSystemSection", "VirtualHardwareSection"]:
    assert vs.find(O + sec) is not None, sec
hw = vs.find(O + "VirtualHardwareSection")
assert hw.get(O + "transport") == "iso"
items = hw.findall(O + "Item")
types = [i.find(R + "ResourceType").text for i in items]
for t in ["3", "4", "10", "17"]:
    assert t in types, "ResourceType %s missing" % t
hosts = {i.find(R + "HostResource").text for i in items if i.find(R + "HostResource") is not None}
assert hosts == {"ovf:/disk/" + i for i in ids}, hosts
keys = {p.get(O + "key") for p in vs.find(O + "ProductSection").findall(O + "Property")}
for k in ["role", "ip", "netmask", "gateway", "dns", "hostname", "admin_password", "cx", "token"]:
    assert "tern." + k in keys, k
print("ok: OVF envelope structure (References, DiskSection, NetworkSection, VirtualSystem, ProductSection properties, VirtualHardwareSection) is complete")
PY
for v in tern-system tern-data; do
  qemu-img info "$work/ova/$v.vmdk" | grep -q "create type: streamOptimized" || fail "$v.vmdk is not streamOptimized"
  echo "ok: $v.vmdk is a streamOptimized VMDK"
done
qemu-img convert -O raw "$work/ova/tern-system.vmdk" "$work/system.raw"
qemu-img convert -O qcow2 "$work/ova/tern-data.vmdk" "$work/data.qcow2"
# The OVF environment as vSphere's ISO transport delivers it.
mkdir -p "$work/ovfenv"
cat > "$work/ovfenv/ovf-env.xml" <<'ENV'
<?xml version="1.0" encoding="UTF-8"?>
<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1" xmlns:oe="http://schemas.dmtf.org/ovf/environment/1" oe:id="tern">
  <PropertySection>
    <Property oe:key="tern.role" oe:value="cx-ps"/>
    <Property oe:key="tern.hostname" oe:value="ova-test"/>
    <Property oe:key="tern.ip" oe:value="dhcp"/>
    <Property oe:key="tern.admin_password" oe:value="ovf-Secret-42"/>
  </PropertySection>
</Environment>
ENV
xorriso -as mkisofs -quiet -V OVF_ENV -o "$work/ovfenv.iso" "$work/ovfenv"
secs=$(boot ova 90 -drive "file=$work/system.raw,format=raw,if=ide,index=0" -drive "file=$work/data.qcow2,format=qcow2,if=ide,index=1" \
  -drive "file=$work/ovfenv.iso,media=cdrom,index=2" -boot c)
echo "ok: the OVA's disk booted (BIOS) and answered health after ${secs}s"
grep -q "state on .*(persistent)" "$work/ova.console" || fail "the data disk was not used: $(grep tern-init "$work/ova.console")"
echo "ok: state on the data disk (TERN-DATA)"
grep -aq "OVF environment on" "$work/ova.console" || fail "the OVF environment was not read"
port=$(cat "$work/ova.port")
curl -sk "https://127.0.0.1:$port/api/v1/login" -H 'content-type: application/json' \
  -d '{"user":"admin","password":"ovf-Secret-42"}' | grep -q '"token"' || fail "the admin password from the OVF environment does not log in"
echo "ok: OVF environment read at first boot (host name, admin password: login works)"
stop ova
secs=$(boot ova-uefi 90 -bios "$ovmf" -drive "file=$work/system.raw,format=raw,if=ide,index=0" -boot c)
echo "ok: the OVA's disk booted (UEFI) and answered health after ${secs}s"
stop ova-uefi
echo "appliance tests passed"
