// SPDX-License-Identifier: GPL-2.0
/*
 * daxmap: reach a device-dax character device (/dev/daxX.Y) the only way it can be reached,
 * through mmap(), for the in-guest tests (busybox has no mmap tool). Built static.
 *
 *   daxmap DEV size                 print the device's size (from sysfs)
 *   daxmap DEV read OFF LEN         print LEN bytes at OFF, as text (non-printing bytes as '.')
 *   daxmap DEV write OFF TEXT       write TEXT at OFF through a shared writable mapping
 *   daxmap DEV hold                 map the device and keep it mapped until standard input
 *                                   ends or a line arrives; prints "held" once mapped
 *   daxmap DEV tryrw                try a writable mapping and, with a read-only mapping, a
 *                                   write: prints "mmap-rw=<errno name|ok> write=<fault|ok>"
 *
 * OFF and LEN accept 0x-hexadecimal. Exit status 0 on success, 1 on errors (printed).
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *dev;

static void die(const char *what)
{
	fprintf(stderr, "daxmap: %s: %s: %s\n", dev, what, strerror(errno));
	exit(1);
}

/* The size of /dev/daxX.Y, from /sys/bus/dax/devices/daxX.Y/size. */
static unsigned long long dev_size(void)
{
	const char *name = strrchr(dev, '/') ? strrchr(dev, '/') + 1 : dev;
	unsigned long long size;
	char path[256];
	FILE *f;

	snprintf(path, sizeof(path), "/sys/bus/dax/devices/%s/size", name);
	f = fopen(path, "r");
	if (!f)
		die(path);
	if (fscanf(f, "%llu", &size) != 1) {
		errno = EINVAL;
		die(path);
	}
	fclose(f);
	return size;
}

static unsigned char *map(int prot, unsigned long long size)
{
	int fd = open(dev, prot & PROT_WRITE ? O_RDWR : O_RDONLY);
	void *p;

	if (fd < 0)
		die("open");
	p = mmap(NULL, size, prot, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED)
		die("mmap");
	close(fd);
	return p;
}

static unsigned long long num(const char *s)
{
	char *end;
	unsigned long long v = strtoull(s, &end, 0);

	if (!*s || *end) {
		fprintf(stderr, "daxmap: not a number: %s\n", s);
		exit(1);
	}
	return v;
}

static void check_range(unsigned long long off, unsigned long long len,
			unsigned long long size)
{
	if (off > size || len > size - off) {
		fprintf(stderr, "daxmap: %s: %#llx+%#llx is outside the device (%#llx bytes)\n",
			dev, off, len, size);
		exit(1);
	}
}

static const char *errno_name(int e)
{
	switch (e) {
	case EACCES: return "EACCES";
	case EPERM: return "EPERM";
	case EINVAL: return "EINVAL";
	case ENXIO: return "ENXIO";
	default: return strerror(e);
	}
}

static int tryrw(unsigned long long size)
{
	const char *rw = "ok", *wr;
	int fd, status;
	void *p;
	pid_t pid;

	fd = open(dev, O_RDWR);
	if (fd < 0)
		fd = open(dev, O_RDONLY);
	if (fd < 0)
		die("open");
	p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED)
		rw = errno_name(errno);
	else
		munmap(p, size);
	close(fd);

	/* a write through a read-only mapping, in a child that may die of it */
	pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0) {
		unsigned char *q = map(PROT_READ, size);

		__atomic_store_n(q, (unsigned char)(q[0] ^ 0xff), __ATOMIC_RELAXED);
		_exit(0);
	}
	if (waitpid(pid, &status, 0) < 0)
		die("waitpid");
	if (WIFSIGNALED(status))
		wr = WTERMSIG(status) == SIGSEGV ? "fault(SIGSEGV)" :
		     WTERMSIG(status) == SIGBUS ? "fault(SIGBUS)" : "fault";
	else
		wr = "ok";
	printf("mmap-rw=%s write=%s\n", rw, wr);
	return 0;
}

int main(int argc, char **argv)
{
	unsigned long long size, off, len, i;
	unsigned char *p;
	char line[16];

	if (argc < 3) {
		fprintf(stderr, "usage: daxmap DEV size|read OFF LEN|write OFF TEXT|hold|tryrw\n");
		return 1;
	}
	dev = argv[1];
	size = dev_size();
	if (!strcmp(argv[2], "tryrw"))
		return tryrw(size);

	if (!strcmp(argv[2], "size")) {
		printf("%llu\n", size);
	} else if (!strcmp(argv[2], "read") && argc == 5) {
		off = num(argv[3]);
		len = num(argv[4]);
		check_range(off, len, size);
		p = map(PROT_READ, size);
		for (i = 0; i < len; i++)
			putchar(p[off + i] >= 0x20 && p[off + i] < 0x7f ? p[off + i] : '.');
		putchar('\n');
	} else if (!strcmp(argv[2], "write") && argc == 5) {
		off = num(argv[3]);
		len = strlen(argv[4]);
		check_range(off, len, size);
		p = map(PROT_READ | PROT_WRITE, size);
		/* device-dax has no page cache: the stores are the write */
		memcpy(p + off, argv[4], len);
		printf("wrote %llu bytes\n", len);
	} else if (!strcmp(argv[2], "hold")) {
		p = map(PROT_READ, size);
		printf("held\n");
		fflush(stdout);
		if (!fgets(line, sizeof(line), stdin))
			line[0] = 0;
		munmap(p, size);
	} else {
		fprintf(stderr, "daxmap: unknown command %s\n", argv[2]);
		return 1;
	}
	return 0;
}
