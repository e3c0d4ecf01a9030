#!/usr/bin/env bash
# Build the Tern OVA: the LiveCD as a bootable system disk (the hybrid ISO
# boots from a disk, BIOS and UEFI), a data disk (ext4, label TERN-DATA: the
# appliance keeps its state there), both as streamOptimized VMDKs, an OVF 1.0
# descriptor with the first-boot properties, a SHA256 manifest, in a tar in
# the order the OVF spec requires (descriptor, manifest, then the files).
# Run as root on Debian; installs its tools. Usage: appliance-image/build.sh [OUT.ova]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
out="${1:-$repo/target/appliance/tern.ova}"
work="$repo/target/appliance/ova-work"
step() { echo "== ova: $*" >&2; }
t0=$(date +%s)
need=()
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
iso="${TERN_ISO:-}"
if [ -z "$iso" ]; then iso="$("$here/../iso/build.sh")"; fi
version=$(grep -m1 '^version' "$repo/Cargo.toml" | cut -d'"' -f2)
data_gib=${TERN_DATA_GIB:-64}

rm -rf "$work"; mkdir -p "$work"
step "system disk from $(basename "$iso")"
cp "$iso" "$work/system.raw"
# A whole number of MiB (VMDK grains); the hybrid partition tables still fit.
sz=$(stat -c %s "$work/system.raw"); mib=$(( (sz + 1048575) / 1048576 ))
truncate -s $((mib * 1048576)) "$work/system.raw"
step "data disk (${data_gib} GiB, ext4 TERN-DATA)"
truncate -s "${data_gib}G" "$work/data.raw"
mkfs.ext4 -q -F -L TERN-DATA -E lazy_itable_init=1,lazy_journal_init=1 "$work/data.raw"

step "streamOptimized VMDKs"
for d in system data; do
  # Monolithic streamOptimized (compressed grains), as OVF packages carry.
  qemu-img convert -q -f raw -O vmdk -o subformat=streamOptimized,adapter_type=lsilogic \
    "$work/$d.raw" "$work/tern-$d.vmdk"
done
sys_cap=$(stat -c %s "$work/system.raw"); data_cap=$((data_gib * 1073741824))
sys_size=$(stat -c %s "$work/tern-system.vmdk"); data_size=$(stat -c %s "$work/tern-data.vmdk")

step "OVF descriptor"
prop() { # key type default label description
  cat <<P
      <Property ovf:key="tern.$1" ovf:type="$2" ovf:userConfigurable="true" ovf:value="$3">
        <Label>$4</Label>
        <Description>$5</Description>
      </Property>
P
}
{
cat <<OVF
<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"
    xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
    xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
    xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
    xmlns:vmw="http://www.vmware.com/schema/ovf"
    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
    <File ovf:id="file-system" ovf:href="tern-system.vmdk" ovf:size="$sys_size"/>
    <File ovf:id="file-data" ovf:href="tern-data.vmdk" ovf:size="$data_size"/>
  </References>
  <DiskSection>
    <Info>Virtual disks</Info>
    <Disk ovf:diskId="system" ovf:fileRef="file-system" ovf:capacity="$sys_cap" ovf:capacityAllocationUnits="byte" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
    <Disk ovf:diskId="data" ovf:fileRef="file-data" ovf:capacity="$data_cap" ovf:capacityAllocationUnits="byte" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <NetworkSection>
    <Info>Networks</Info>
    <Network ovf:name="Management">
      <Description>Management, replication (9443) and UI/API (8443) network</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id="tern">
    <Info>Tern continuous-data-protection appliance</Info>
    <Name>Tern $version</Name>
    <AnnotationSection>
      <Info>About</Info>
      <Annotation>Tern $version: configuration server + process server, process server, master target or V2P failback target (property tern.role). UI and API on https://ADDRESS:8443/.</Annotation>
    </AnnotationSection>
    <ProductSection ovf:required="false">
      <Info>First-boot settings, read from the OVF environment (ISO transport)</Info>
      <Product>Tern</Product>
      <Vendor>Tern</Vendor>
      <Version>$version</Version>
      <Category>Appliance</Category>
OVF
prop role string cx-ps "Role" "cx-ps (configuration + process server), ps, mt or failback"
prop ip string dhcp "IP address" "dhcp, or a static address (10.0.0.5, or 10.0.0.5/24)"
prop netmask string "255.255.255.0" "Netmask" "Netmask of a static address given without /PREFIX"
prop gateway string "" "Gateway" "Default gateway (static addressing)"
prop dns string "" "DNS server" "Name server address"
prop hostname string tern "Host name" "This appliance's host name"
prop cx string "" "Configuration server" "https://CX:8443 (roles ps, mt, failback)"
prop token string "" "Enrollment token" "From tern token create on the CX (roles ps, mt, failback)"
echo '      <Category>Administrator</Category>'
cat <<'P'
      <Property ovf:key="tern.admin_password" ovf:type="string" ovf:password="true" ovf:userConfigurable="true" ovf:value="">
        <Label>Admin password</Label>
        <Description>First password of the admin user (role cx-ps, at least 8 characters); empty: generated, in /var/lib/tern/admin-password</Description>
      </Property>
P
cat <<OVF
    </ProductSection>
    <OperatingSystemSection ovf:id="96" vmw:osType="debian11_64Guest">
      <Info>Linux 64-bit</Info>
    </OperatingSystemSection>
    <VirtualHardwareSection ovf:transport="iso">
      <Info>2 CPUs, 4 GiB, system and data disks on LSI Logic, one VMXNET3 NIC, a CD-ROM for the OVF environment</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>tern</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-13</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:Description>Number of virtual CPUs</rasd:Description>
        <rasd:ElementName>2 virtual CPUs</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>2</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:Description>Memory size</rasd:Description>
        <rasd:ElementName>4096 MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>4096</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Description>SCSI controller</rasd:Description>
        <rasd:ElementName>SCSI controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>lsilogic</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Description>IDE controller</rasd:Description>
        <rasd:ElementName>IDE controller 0</rasd:ElementName>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:ResourceType>5</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>System disk</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/system</rasd:HostResource>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>1</rasd:AddressOnParent>
        <rasd:ElementName>Data disk</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/data</rasd:HostResource>
        <rasd:InstanceID>6</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item ovf:required="false">
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:AutomaticAllocation>false</rasd:AutomaticAllocation>
        <rasd:ElementName>CD-ROM (OVF environment)</rasd:ElementName>
        <rasd:InstanceID>7</rasd:InstanceID>
        <rasd:Parent>4</rasd:Parent>
        <rasd:ResourceType>15</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>7</rasd:AddressOnParent>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>Management</rasd:Connection>
        <rasd:Description>VMXNET3 ethernet adapter on "Management"</rasd:Description>
        <rasd:ElementName>Ethernet 1</rasd:ElementName>
        <rasd:InstanceID>8</rasd:InstanceID>
        <rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
OVF
} > "$work/tern.ovf"

step "manifest and archive"
(cd "$work" && for f in tern.ovf tern-system.vmdk tern-data.vmdk; do
  echo "SHA256($f)= $(sha256sum "$f" | cut -d' ' -f1)"
done > tern.mf)
mkdir -p "$(dirname "$out")"
# OVF 1.x: the descriptor first, then the manifest, then the files in
# References order; plain ustar.
(cd "$work" && tar --format=ustar -cf "$out" tern.ovf tern.mf tern-system.vmdk tern-data.vmdk)
echo "== ova: $out $(du -h "$out" | cut -f1) (system disk $(du -h "$work/tern-system.vmdk" | cut -f1), data disk $(du -h "$work/tern-data.vmdk" | cut -f1) for ${data_gib} GiB) in $(( $(date +%s) - t0 )) s" >&2
echo "$out"
