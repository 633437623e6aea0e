//! The long help texts of `tagmem-vmm` and its subcommands.

pub(crate) const TAGGED_MEMORY_HELP: &str = "\
Tagged capacity to hot-add: one extent per option, repeatable. Options with the same
tag form one offer chain (one tag group), in command-line order; for shared=on their
order gives the sequence numbers.

Keys (comma-separated key=value, Cloud Hypervisor style):
  tag=<uuid>         the tag naming the capacity; omit (or nil) for untagged capacity
  path=<p>           backing: a regular or hugetlbfs file, a devdax device /dev/daxX.Y,
                     or the word memfd (anonymous, sparse). Without path=, untagged
                     capacity uses a memfd and a tag is looked up among the host's dax
                     devices
  size=<bytes>       K, M, G, T suffixes (powers of 1024); a non-zero multiple of 2 MiB.
                     Default: the rest of the backing after offset (files, devdax)
  offset=<bytes>     offset into the backing, 2 MiB aligned (default 0)
  shared=on|off      sharable capacity: needs a tag, never onlined as guest RAM
                     (default off)
  readonly=on|off    the guest may read but not write (default off)
  read_latency=<ns>, write_latency=<ns>, read_bandwidth=<MB/s>, write_bandwidth=<MB/s>
                     performance as Linux HMAT reports it. Default: the host's CPU
                     access values (access1) for a devdax backing: its node's, else its
                     CXL region's; else not reported
  node=<n>           guest NUMA node / proximity domain (default 0)
  id=<name>          the extent's name in API answers (default _tagmemN)

Examples (TAG=6f1c2a9e-0d3b-4c55-9a7e-3b1f00c0ffee):
  --tagged-memory size=64M
  --tagged-memory tag=6f1c2a9e-0d3b-4c55-9a7e-3b1f00c0ffee,path=memfd,size=4M,
                  read_latency=250,write_latency=300,read_bandwidth=20000,node=1
                  (one value; broken here only to fit the help)
  --tagged-memory tag=$TAG,path=/dev/dax0.0,offset=2M,size=1G,shared=on
  --tagged-memory tag=$TAG,path=/dev/hugepages/tm,size=2G,readonly=on,id=huge0
  --tagged-memory tag=$TAG    (no path=: the host's dax device carrying this tag)";

pub(crate) const API_SOCKET_HELP: &str = "\
Serve the HTTP/JSON control API on this Unix socket: path=<file> (a bare path works
too). Endpoints: PUT /api/v1/vm.add-tagged-memory, PUT /api/v1/vm.release-tagged-memory,
GET /api/v1/vm.tagged-memory, GET /api/v1/vmm.ping.

Keys:
  path=<file>        the socket; a stale socket there (nobody listening) is replaced,
                     anything else at the path is an error and left alone
  mode=0600|0660     permissions of the socket, whatever the umask: the owner only
                     (default) or owner and group. Whoever can connect can make the VMM
                     open and map files

Examples:
  --api-socket path=/tmp/tagmem.sock
  --api-socket path=/run/tagmem/vm0.sock,mode=0660
  curl --unix-socket /tmp/tagmem.sock http://localhost/api/v1/vm.tagged-memory";

pub(crate) const MEMORY_HELP: &str = "\
Guest RAM, Cloud Hypervisor style (comma-separated key=value, K, M, G suffixes):
  size=<bytes>             boot RAM, a multiple of 2 MiB (default 64M for the test
                           guest, 512M with --kernel)
  hotplug_size=<bytes>     a base virtio-mem region of this size at 4 GiB, a multiple
                           of 128 MiB, that the guest's virtio_mem driver plugs as the
                           host asks (client resize; PUT /api/v1/vm.resize)
  hotplugged_size=<bytes>  how much of it is requested from boot on (default 0)
Tagged capacity lives above the base region.

Examples:
  --memory size=128M
  --memory size=512M,hotplug_size=1G,hotplugged_size=256M";

pub(crate) const KERNEL_HELP: &str = "\
Boot this Linux kernel instead of the bundled test guest: an ELF vmlinux (preferred:
no decompression) or a bzImage. The VMM loads it with linux-loader, writes the e820
map, an MP table and the command line, and runs it on KVM's in-kernel irqchip with a
16550 serial console on COM1 (IRQ 4), the i8042 reset line, and the tagged
virtio-mem device on virtio-mmio (announced as virtio_mmio.device= on the command
line). The VMM exits when the guest reboots or resets (use reboot=k).

Example:
  tagmem-vmm run --kernel vmlinux --initramfs initramfs.cpio.gz \\
      --cmdline \"console=ttyS0 reboot=k panic=1\" --memory size=512M,hotplug_size=1G";

pub(crate) const CMDLINE_HELP: &str = "\
The kernel command line for --kernel (default \"console=ttyS0 reboot=k panic=1
8250.nr_uarts=1\"); the VMM appends one virtio_mmio.device= entry per device.";

pub(crate) const SERIAL_HELP: &str = "\
Where a Linux guest's serial console (ttyS0) goes: tty (standard output, and standard
input typed into the guest; the terminal is put in raw mode), file=<path>, or
null/off (default tty).";

pub(crate) const SYSFS_ROOT_HELP: &str = "\
Directory the host's sysfs and /dev are read below, to resolve a tag given without
path= and for the HMAT values of devdax backings (default /).

Example:
  --sysfs-root /";

pub(crate) const ABOUT: &str = "\
Reference VMM for tagged-capacity virtio-mem on KVM.

Runs the bundled bare-metal test guest with the tagged virtio-mem device on virtio-mmio,
hot-adds tagged extents from memfd, files or devdax, and controls them over an HTTP/JSON
API on a Unix socket (docs/interface.md).";

pub(crate) const EXAMPLES: &str = "\
Examples:
  tagmem-vmm demo
  tagmem-vmm run --api-socket path=/tmp/tagmem.sock --tagged-memory size=64M
  tagmem-vmm run --kernel vmlinux --initramfs initramfs.cpio.gz \\
      --memory size=512M,hotplug_size=1G --api-socket /tmp/tagmem.sock
  tagmem-vmm client --api-socket /tmp/tagmem.sock resize --desired-ram 1G
  tagmem-vmm client --api-socket /tmp/tagmem.sock add-tagged-memory \\
      tag=6f1c2a9e-0d3b-4c55-9a7e-3b1f00c0ffee,path=memfd,size=4M
  tagmem-vmm client --api-socket /tmp/tagmem.sock tagged-memory";

pub(crate) const DEMO_ABOUT: &str = "\
Boot a VM with the test guest and hot-add tagged extents: by default from memfd, an
untagged extent, a tagged group with HMAT-like metadata, a sharable group and a
read-only extent. The guest's driver accepts them; the host writes a pattern that the
guest reads back; metadata is updated, poison reported and one tag group released. The
guest's own view is printed before and after the release, with a timeline.

With --tagged-memory the given extents replace the built-in set; the first tag group
gets the metadata update and the last one is released. On real devdax, e.g.:
  tagmem-vmm demo --tagged-memory tag=$TAG,path=/dev/dax0.0,size=2G";

pub(crate) const CLIENT_SOCKET_HELP: &str = "\
The API socket of a running `tagmem-vmm run --api-socket path=<file>`: the file, or
path=<file>.

Example:
  --api-socket /tmp/tagmem.sock";

pub(crate) const ADD_ABOUT: &str = "\
Offer extents as one chain (PUT /api/v1/vm.add-tagged-memory). Each argument is one
extent in the --tagged-memory syntax (see run --help).

Example:
  tagmem-vmm client --api-socket /tmp/tagmem.sock add-tagged-memory \\
      tag=$TAG,path=memfd,size=4M,shared=on tag=$TAG,path=memfd,size=2M,shared=on";

pub(crate) const RELEASE_ABOUT: &str = "\
Ask the guest to release a tag group or an extent (PUT /api/v1/vm.release-tagged-memory).
Returns once the release was requested; the guest's driver gives the capacity back.

Examples:
  tagmem-vmm client --api-socket /tmp/tagmem.sock release-tagged-memory --tag $TAG
  tagmem-vmm client --api-socket /tmp/tagmem.sock release-tagged-memory --extent 3";
