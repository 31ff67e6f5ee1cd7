/*
 * kvmstat's system-call wrappers, shared by the perf counter sets
 * (kvmstat_native.c) and the BPF engine (kvmstat_bpf.c).  Internal: not
 * part of the Python binding.
 *
 * Every function returns >= 0 (usually a file descriptor) on success and
 * -errno on failure, and opens descriptors close-on-exec.
 */
#ifndef KVMSTAT_SYS_H
#define KVMSTAT_SYS_H

#include <stddef.h>
#include <stdint.h>

struct perf_event_attr;
struct bpf_insn;

/* perf_event_open(attr, pid, cpu, group_fd, PERF_FLAG_FD_CLOEXEC). */
int ksys_perf_event_open(struct perf_event_attr *attr, int pid, int cpu, int group_fd);

/* A tracepoint's perf event, disabled and counting nothing by itself: the
 * carrier of an attached BPF program (pid -1, cpu 0; a program attached
 * to it runs for the hits on every CPU). */
int ksys_perf_open_tracepoint(uint64_t tracepoint_id);

/* ioctl(perf_fd, PERF_EVENT_IOC_SET_BPF, prog_fd). */
int ksys_perf_attach_bpf(int perf_fd, int prog_fd);

/* bpf(BPF_MAP_CREATE); name is for bpftool users (truncated to fit). */
int ksys_map_create(uint32_t type, uint32_t key_size, uint32_t value_size,
                    uint32_t max_entries, uint32_t flags, const char *name);
int ksys_map_lookup(int fd, const void *key, void *value);
/* BPF_ANY: create or replace. */
int ksys_map_update(int fd, const void *key, const void *value);
int ksys_map_delete(int fd, const void *key);
/* BPF_MAP_GET_NEXT_KEY; key NULL for the first. */
int ksys_map_next_key(int fd, const void *key, void *next);
/*
 * BPF_MAP_LOOKUP_BATCH: in_token NULL for the first call; *count is the
 * buffers' capacity on entry, the entries returned on exit (also when the
 * call fails with -ENOENT, the end of the map).
 */
int ksys_map_lookup_batch(int fd, const void *in_token, void *out_token,
                          void *keys, void *values, uint32_t *count);

/*
 * bpf(BPF_PROG_LOAD) of a GPL program of this type (and expected attach
 * type, 0 for none).  The first attempt has no log (the verifier works
 * faster without); only when it fails is the program loaded again with the
 * log (the end of it, NUL-terminated, when it is longer than log_size), so
 * the caller can show why.  log may be NULL.  Returns the fd or the first
 * attempt's -errno.
 */
int ksys_prog_load(uint32_t prog_type, uint32_t expected_attach_type,
                   const struct bpf_insn *insns, unsigned int ninsns,
                   const char *name, char *log, unsigned int log_size);

/* bpf(BPF_RAW_TRACEPOINT_OPEN): attach a raw tracepoint program to the
 * tracepoint called name (e.g. "kvm_userspace_exit"); the returned
 * descriptor keeps it attached. */
int ksys_raw_tracepoint_open(const char *name, int prog_fd);

/* bpf(BPF_OBJ_GET_INFO_BY_FD) of a program: its recursion_misses (0 on
 * kernels before 5.12, which do not report them). */
int ksys_prog_recursion_misses(int prog_fd, uint64_t *missed);

/*
 * Walk a map by key iteration (BPF_MAP_GET_NEXT_KEY, then LOOKUP_ELEM of
 * each key into values), for kernels without batch lookups: visit(ctx,
 * key) runs after each lookup; a key deleted meanwhile is skipped.  key
 * and next are buffers of key_size bytes.  Returns 0, or the first -errno
 * of the walk or of visit.
 */
int ksys_map_walk(int fd, void *key, void *next, size_t key_size, void *values,
                  int (*visit)(void *ctx, const void *key), void *ctx);

/* The number of possible CPUs (per-CPU values per map entry), from a
 * lookup in a fresh, zeroed one-slot BPF_MAP_TYPE_PERCPU_ARRAY of u64. */
int ksys_possible_cpus(int percpu_map_fd);

/* close(*fd) if it is open, and mark it closed (-1). */
void ksys_close(int *fd);

#endif
