/*
 * kvmstat's system-call wrappers: see kvmstat_sys.h.
 */
#define _GNU_SOURCE
#include "kvmstat_sys.h"

#include <errno.h>
#include <linux/bpf.h>
#include <linux/perf_event.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

static uint64_t ptr_u64(const void *p)
{
    return (uint64_t)(uintptr_t)p;
}

static int sys_bpf(int cmd, union bpf_attr *attr)
{
    long rc = syscall(__NR_bpf, cmd, attr, sizeof(*attr));
    return rc < 0 ? -errno : (int)rc;
}

int ksys_perf_event_open(struct perf_event_attr *attr, int pid, int cpu, int group_fd)
{
    long fd = syscall(SYS_perf_event_open, attr, pid, cpu, group_fd, PERF_FLAG_FD_CLOEXEC);
    return fd < 0 ? -errno : (int)fd;
}

int ksys_perf_open_tracepoint(uint64_t tracepoint_id)
{
    struct perf_event_attr attr;

    memset(&attr, 0, sizeof(attr));
    attr.type = PERF_TYPE_TRACEPOINT;
    attr.size = sizeof(attr);
    attr.config = tracepoint_id;
    attr.disabled = 1;
    return ksys_perf_event_open(&attr, -1, 0, -1);
}

int ksys_perf_attach_bpf(int perf_fd, int prog_fd)
{
    return ioctl(perf_fd, PERF_EVENT_IOC_SET_BPF, prog_fd) < 0 ? -errno : 0;
}

int ksys_map_create(uint32_t type, uint32_t key_size, uint32_t value_size,
                    uint32_t max_entries, uint32_t flags, const char *name)
{
    union bpf_attr a;

    memset(&a, 0, sizeof(a));
    a.map_type = type;
    a.key_size = key_size;
    a.value_size = value_size;
    a.max_entries = max_entries;
    a.map_flags = flags;
    strncpy(a.map_name, name, sizeof(a.map_name) - 1);
    return sys_bpf(BPF_MAP_CREATE, &a);
}

int ksys_map_lookup(int fd, const void *key, void *value)
{
    union bpf_attr a;

    memset(&a, 0, sizeof(a));
    a.map_fd = (uint32_t)fd;
    a.key = ptr_u64(key);
    a.value = ptr_u64(value);
    return sys_bpf(BPF_MAP_LOOKUP_ELEM, &a);
}

int ksys_map_update(int fd, const void *key, const void *value)
{
    union bpf_attr a;

    memset(&a, 0, sizeof(a));
    a.map_fd = (uint32_t)fd;
    a.key = ptr_u64(key);
    a.value = ptr_u64(value);
    a.flags = BPF_ANY;
    return sys_bpf(BPF_MAP_UPDATE_ELEM, &a);
}

int ksys_map_delete(int fd, const void *key)
{
    union bpf_attr a;

    memset(&a, 0, sizeof(a));
    a.map_fd = (uint32_t)fd;
    a.key = ptr_u64(key);
    return sys_bpf(BPF_MAP_DELETE_ELEM, &a);
}

int ksys_map_next_key(int fd, const void *key, void *next)
{
    union bpf_attr a;

    memset(&a, 0, sizeof(a));
    a.map_fd = (uint32_t)fd;
    a.key = key ? ptr_u64(key) : 0;
    a.next_key = ptr_u64(next);
    return sys_bpf(BPF_MAP_GET_NEXT_KEY, &a);
}

int ksys_map_lookup_batch(int fd, const void *in_token, void *out_token,
                          void *keys, void *values, uint32_t *count)
{
    union bpf_attr a;

    memset(&a, 0, sizeof(a));
    a.batch.in_batch = in_token ? ptr_u64(in_token) : 0;
    a.batch.out_batch = ptr_u64(out_token);
    a.batch.keys = ptr_u64(keys);
    a.batch.values = ptr_u64(values);
    a.batch.count = *count;
    a.batch.map_fd = (uint32_t)fd;
    int rc = sys_bpf(BPF_MAP_LOOKUP_BATCH, &a);
    *count = a.batch.count;
    return rc;
}

int ksys_prog_load(uint32_t prog_type, uint32_t expected_attach_type,
                   const struct bpf_insn *insns, unsigned int ninsns,
                   const char *name, char *log, unsigned int log_size)
{
    static const char license[] = "GPL";  /* kvmstat is GPL-2.0-only */
    union bpf_attr a;

    memset(&a, 0, sizeof(a));
    a.prog_type = prog_type;
    a.expected_attach_type = expected_attach_type;
    a.insn_cnt = ninsns;
    a.insns = ptr_u64(insns);
    a.license = ptr_u64(license);
    strncpy(a.prog_name, name, sizeof(a.prog_name) - 1);
    int fd = sys_bpf(BPF_PROG_LOAD, &a);
    if (fd >= 0 || !log || log_size < 2)
        return fd;

    log[0] = '\0';
    a.log_level = 1;
    a.log_buf = ptr_u64(log);
    a.log_size = log_size;
    int again = sys_bpf(BPF_PROG_LOAD, &a);
    log[log_size - 1] = '\0';
    return again >= 0 ? again : fd;
}

int ksys_raw_tracepoint_open(const char *name, int prog_fd)
{
    union bpf_attr a;

    memset(&a, 0, sizeof(a));
    a.raw_tracepoint.name = ptr_u64(name);
    a.raw_tracepoint.prog_fd = (uint32_t)prog_fd;
    return sys_bpf(BPF_RAW_TRACEPOINT_OPEN, &a);
}

int ksys_prog_recursion_misses(int prog_fd, uint64_t *missed)
{
    struct bpf_prog_info info;
    union bpf_attr a;

    memset(&info, 0, sizeof(info));
    memset(&a, 0, sizeof(a));
    a.info.bpf_fd = (uint32_t)prog_fd;
    a.info.info_len = sizeof(info);
    a.info.info = ptr_u64(&info);
    int rc = sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &a);
    if (rc < 0)
        return rc;
    /* Kernels before 5.12 have no such field and return a shorter
     * info_len; the zeroed field then reads as 0. */
    if (a.info.info_len >= offsetof(struct bpf_prog_info, recursion_misses) + sizeof(uint64_t))
        *missed = info.recursion_misses;
    else
        *missed = 0;
    return 0;
}

void ksys_close(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

int ksys_map_walk(int fd, void *key, void *next, size_t key_size, void *values,
                  int (*visit)(void *ctx, const void *key), void *ctx)
{
    int have_key = 0;

    for (;;) {
        int rc = ksys_map_next_key(fd, have_key ? key : NULL, next);
        if (rc == -ENOENT)
            return 0;
        if (rc < 0)
            return rc;
        memcpy(key, next, key_size);
        have_key = 1;
        rc = ksys_map_lookup(fd, key, values);
        if (rc == -ENOENT)
            continue;
        if (rc < 0)
            return rc;
        rc = visit(ctx, key);
        if (rc < 0)
            return rc;
    }
}

/* The kernel copies one 8-byte slot per possible CPU; no kernel supports
 * more than this many CPUs (NR_CPUS is at most 8192). */
#define MAX_POSSIBLE_CPUS 16384

/*
 * The number of possible CPUs, as the kernel sees it: a lookup in a per-CPU
 * map copies one 8-byte slot per possible CPU, so look up the (zeroed) slot
 * of a fresh one-slot per-CPU array into a buffer of all-ones and count the
 * slots that came back zero.  This cannot disagree with the kernel, unlike
 * parsing /sys/devices/system/cpu/possible.
 */
int ksys_possible_cpus(int percpu_map_fd)
{
    uint64_t *buf = malloc(MAX_POSSIBLE_CPUS * sizeof(*buf));
    uint32_t key = 0;
    unsigned int n = 0;

    if (!buf)
        return -ENOMEM;
    memset(buf, 0xff, MAX_POSSIBLE_CPUS * sizeof(*buf));
    int rc = ksys_map_lookup(percpu_map_fd, &key, buf);
    if (rc == 0) {
        while (n < MAX_POSSIBLE_CPUS && buf[n] == 0)
            n++;
        rc = (n == 0 || n == MAX_POSSIBLE_CPUS) ? -EIO : (int)n;
    }
    free(buf);
    return rc;
}
