#!/usr/bin/env bash
# Build the Tern LiveCD: a hybrid BIOS/UEFI ISO (grub-mkrescue) with Debian's
# kernel, a busybox initramfs holding the static `tern`, and a boot menu:
# CX + PS appliance, PS, MT, V2P failback target.
# Run as root on Debian; installs its tools. Usage: iso/build.sh [OUT.iso]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
out="${1:-$repo/target/appliance/tern.iso}"
work="$repo/target/appliance/iso-work"
step() { echo "== iso: $*" >&2; }
t0=$(date +%s)

need=()
for t in xorriso:xorriso grub-mkrescue:grub-common mformat:mtools mkfs.vfat:dosfstools cpio:cpio modprobe:kmod depmod:kmod; do
  command -v "${t%%:*}" >/dev/null 2>&1 || need+=("${t#*:}")
done
[ -d /usr/lib/grub/i386-pc ] || need+=(grub-pc-bin)
[ -d /usr/lib/grub/x86_64-efi ] || need+=(grub-efi-amd64-bin)
[ -x /bin/busybox ] && /bin/busybox --list | grep -q '^udhcpc$' || need+=(busybox-static)
if [ ${#need[@]} -gt 0 ]; then
  step "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ -n "${TERN_BIN:-}" ]; then
  bin="$TERN_BIN"   # a static tern built before (scripts/build-static)
  file -b "$bin" | grep -Eq "static(-pie)? linked|statically linked" || { echo "iso: $bin is not static" >&2; exit 1; }
else
  step "static binary"
  bin="$repo/$("$repo/scripts/build-static" ${TERN_PROFILE:+--profile "$TERN_PROFILE"})"
fi

rm -rf "$work"; mkdir -p "$work/kernel" "$work/root" "$work/iso/boot/grub"
step "kernel from Debian's linux-image-amd64"
kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
[ -n "$kpkg" ] || { apt-get update -qq; kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}'); }
(cd "$work/kernel" && apt-get download -qq "$kpkg" 2>/dev/null && dpkg-deb -x ./*.deb x)
kver=${kpkg#linux-image-}
depmod -b "$work/kernel/x" "$kver"
cp "$work/kernel/x/boot/vmlinuz-$kver" "$work/iso/boot/vmlinuz"

step "initramfs"
r="$work/root"
mkdir -p "$r/bin" "$r/etc" "$r/lib/modules/tern" "$r/usr/bin"
cp /bin/busybox "$r/bin/busybox"
cp "$bin" "$r/usr/bin/tern"
install -m 0755 "$here/init" "$r/init"
install -m 0755 "$here/udhcpc.script" "$r/etc/udhcpc.script"
echo "root:x:0:0:root:/root:/bin/sh" > "$r/etc/passwd"
# Drivers for qemu, VMware and common servers: NICs, disk controllers,
# filesystems (ext4 for state, iso9660/vfat for seeds and OVF environments).
mods="e1000 e1000e vmxnet3 virtio_net virtio_pci virtio_blk virtio_scsi ahci ata_piix sd_mod sr_mod vmw_pvscsi nvme mptspi megaraid_sas ext4 isofs vfat nls_cp437 nls_utf8 nls_iso8859_1"
: > "$r/lib/modules/tern/order"
for m in $mods; do
  modprobe -d "$work/kernel/x" -S "$kver" --show-depends "$m" 2>/dev/null | awk '$1=="insmod"{print $2}'
done | awk '!seen[$0]++' | while read -r ko; do
  cp "$ko" "$r/lib/modules/tern/"
  basename "$ko" >> "$r/lib/modules/tern/order"
done
(cd "$r" && find . | cpio -o -H newc --quiet | gzip -9) > "$work/iso/boot/initrd.img"

step "boot menu"
cat > "$work/iso/boot/grub/grub.cfg" <<'GRUB'
set timeout=5
set default=0
serial --unit=0 --speed=115200
terminal_input console serial
terminal_output console serial
set common="console=tty0 console=ttyS0,115200 quiet"
menuentry "Tern CX + PS appliance (configuration and process server)" {
  linux /boot/vmlinuz tern.role=cx-ps $common
  initrd /boot/initrd.img
}
menuentry "Tern process server (PS)" {
  linux /boot/vmlinuz tern.role=ps $common
  initrd /boot/initrd.img
}
menuentry "Tern master target (MT)" {
  linux /boot/vmlinuz tern.role=mt $common
  initrd /boot/initrd.img
}
menuentry "Tern V2P failback target (this machine's disks receive their data back)" {
  linux /boot/vmlinuz tern.role=failback $common
  initrd /boot/initrd.img
}
GRUB

step "hybrid ISO (BIOS + UEFI)"
mkdir -p "$(dirname "$out")"
grub-mkrescue -o "$out" "$work/iso" -- -volid TERN_LIVE >/dev/null 2>&1
echo "== iso: $out $(du -h "$out" | cut -f1) (tern $(du -h "$bin" | cut -f1), initrd $(du -h "$work/iso/boot/initrd.img" | cut -f1)) in $(( $(date +%s) - t0 )) s" >&2
echo "$out"
