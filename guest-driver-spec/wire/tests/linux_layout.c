/*
 * Prints the layout of the base virtio-mem wire format as the kernel's own uapi headers define
 * it, one "name value" pair per line. tests/linux_layout.rs compiles and runs this program and
 * compares every line with tagmem-wire.
 *
 * Names: "sizeof <struct>", "sizeof <struct>.<field>", "offsetof <struct>.<field>" and
 * "const <MACRO>". A constant the installed header does not define is not printed.
 */
#include <stddef.h>
#include <stdio.h>

#include <linux/virtio_config.h>
#include <linux/virtio_ids.h>
#include <linux/virtio_mem.h>

#define SIZE(type) printf("sizeof %s %zu\n", #type, sizeof(struct type))
#define FIELD(type, member)                                                                \
	do {                                                                               \
		printf("offsetof %s.%s %zu\n", #type, #member, offsetof(struct type, member)); \
		printf("sizeof %s.%s %zu\n", #type, #member,                                 \
		       sizeof(((struct type *)0)->member));                                    \
	} while (0)
#define CONST(name) printf("const %s %llu\n", #name, (unsigned long long)(name))

int main(void)
{
	SIZE(virtio_mem_config);
	FIELD(virtio_mem_config, block_size);
	FIELD(virtio_mem_config, node_id);
	FIELD(virtio_mem_config, padding);
	FIELD(virtio_mem_config, addr);
	FIELD(virtio_mem_config, region_size);
	FIELD(virtio_mem_config, usable_region_size);
	FIELD(virtio_mem_config, plugged_size);
	FIELD(virtio_mem_config, requested_size);

	SIZE(virtio_mem_req);
	FIELD(virtio_mem_req, type);
	FIELD(virtio_mem_req, padding);
	FIELD(virtio_mem_req, u);
	FIELD(virtio_mem_req, u.plug.addr);
	FIELD(virtio_mem_req, u.plug.nb_blocks);
	FIELD(virtio_mem_req, u.plug.padding);
	FIELD(virtio_mem_req, u.unplug.addr);
	FIELD(virtio_mem_req, u.unplug.nb_blocks);
	FIELD(virtio_mem_req, u.unplug.padding);
	FIELD(virtio_mem_req, u.state.addr);
	FIELD(virtio_mem_req, u.state.nb_blocks);
	FIELD(virtio_mem_req, u.state.padding);
	SIZE(virtio_mem_req_plug);
	SIZE(virtio_mem_req_unplug);
	SIZE(virtio_mem_req_state);

	SIZE(virtio_mem_resp);
	FIELD(virtio_mem_resp, type);
	FIELD(virtio_mem_resp, padding);
	FIELD(virtio_mem_resp, u);
	FIELD(virtio_mem_resp, u.state.state);
	SIZE(virtio_mem_resp_state);

	CONST(VIRTIO_ID_MEM);
	CONST(VIRTIO_F_VERSION_1);
	CONST(VIRTIO_MEM_F_ACPI_PXM);
	CONST(VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE);
#ifdef VIRTIO_MEM_F_PERSISTENT_SUSPEND
	CONST(VIRTIO_MEM_F_PERSISTENT_SUSPEND);
#endif
	CONST(VIRTIO_MEM_REQ_PLUG);
	CONST(VIRTIO_MEM_REQ_UNPLUG);
	CONST(VIRTIO_MEM_REQ_UNPLUG_ALL);
	CONST(VIRTIO_MEM_REQ_STATE);
	CONST(VIRTIO_MEM_RESP_ACK);
	CONST(VIRTIO_MEM_RESP_NACK);
	CONST(VIRTIO_MEM_RESP_BUSY);
	CONST(VIRTIO_MEM_RESP_ERROR);
	CONST(VIRTIO_MEM_STATE_PLUGGED);
	CONST(VIRTIO_MEM_STATE_UNPLUGGED);
	CONST(VIRTIO_MEM_STATE_MIXED);
	return 0;
}
