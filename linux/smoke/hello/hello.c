// SPDX-License-Identifier: GPL-2.0
/*
 * A module built out of tree against the guest kernel's build tree: the smoke test loads and
 * unloads it to show that modules work in the guest.
 */
#include <linux/init.h>
#include <linux/module.h>
#include <linux/printk.h>

static int __init hello_init(void)
{
	pr_info("hello: loaded\n");
	return 0;
}

static void __exit hello_exit(void)
{
	pr_info("hello: unloaded\n");
}

module_init(hello_init);
module_exit(hello_exit);

MODULE_DESCRIPTION("Out-of-tree module smoke test for the tagmem guest kernel");
MODULE_LICENSE("GPL");
