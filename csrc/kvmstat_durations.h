/*
 * kvmstat durations engine: how long vCPUs stay in each state, measured in
 * the kernel by BPF programs on KVM's tracepoints.
 *
 * Per thread, the programs keep the time of the last state change in a
 * small table (tid -> timestamps).  When a state ends, its duration goes
 * into a log2 histogram keyed by (kind, process, reason): a count, a sum,
 * a maximum and KVMSTAT_DUR_BUCKETS buckets, bucket i counting durations
 * d with 2^i <= d < 2^(i+1) nanoseconds (bucket 0 also holds 0 and 1 ns,
 * the last bucket everything from 2^(KVMSTAT_DUR_BUCKETS-1) ns up).
 *
 * Per thread, the table also keeps the totals of the time spent in KVM_RUN,
 * in the VMM, in the guest and halted (kvmstat_dur_read_vcpus).
 *
 * The kinds (docs/durations.md, docs/design.md §3.4):
 *   VMM     kvm_userspace_exit(REASON) until the thread enters KVM_RUN
 *           again (the marker: kvm_fpu with load = 1, which KVM fires at
 *           the start of every KVM_RUN on x86, or syscalls:sys_enter_ioctl
 *           with cmd = KVM_RUN where kvm_fpu is missing)
 *   KERNEL  kvm_exit(REASON) until kvm_entry, or until kvm_userspace_exit
 *           when the exit goes on to user space (the VMM time follows)
 *   GUEST   kvm_entry until kvm_exit (reason 0)
 *   HALT    kvm_vcpu_wakeup's ns field; reason 1 = waited, 0 = polled
 * Tracepoints given id 0 are not opened (e.g. kvm_exit where the kernel
 * never fires it: then the KERNEL and GUEST kinds simply stay empty).
 *
 * Each program is attached as a raw tracepoint where it can be (it reads
 * its field among the tracepoint's arguments, and the kernel does not build
 * the trace record first: the cheaper way), else through a perf event of
 * the tracepoint (it reads the record), as kvmstat_bpf.h describes.
 *
 * Counts, sums and buckets are cumulative since the engine was created (or
 * reset); max_ns is the largest duration recorded since the previous read
 * (the programs keep it per generation, and each read starts a new one).
 *
 * Everything is a file descriptor, released when the process exits.  All
 * functions return >= 0 on success and -errno on failure; no global state.
 */
#ifndef KVMSTAT_DURATIONS_H
#define KVMSTAT_DURATIONS_H

#include <stdint.h>

#include "kvmstat_bpf.h"

/* cdef: begin (csrc/build_native.py hands the API from here to cffi) */

#define KVMSTAT_DUR_BUCKETS 40

/* Kinds of duration (struct kvmstat_dur_entry.kind). */
#define KVMSTAT_DUR_VMM    1
#define KVMSTAT_DUR_KERNEL 2
#define KVMSTAT_DUR_GUEST  3
#define KVMSTAT_DUR_HALT   4

/* Tracepoints in struct kvmstat_dur_config order (kvmstat_bpf_error's
 * event_index when creating the engine fails). */
#define KVMSTAT_DUR_TP_USERSPACE_EXIT 0
#define KVMSTAT_DUR_TP_MARKER 1
#define KVMSTAT_DUR_TP_EXIT 2
#define KVMSTAT_DUR_TP_ENTRY 3
#define KVMSTAT_DUR_TP_WAKEUP 4

/* How the programs are attached (struct kvmstat_dur_config.attach). */
#define KVMSTAT_DUR_ATTACH_AUTO 0  /* raw tracepoint where possible, else perf */
#define KVMSTAT_DUR_ATTACH_PERF 1  /* always through perf */

/* How a tracepoint's program is attached (kvmstat_dur_attached). */
#define KVMSTAT_DUR_ATTACHED_NONE 0
#define KVMSTAT_DUR_ATTACHED_PERF 1
#define KVMSTAT_DUR_ATTACHED_RAW  2

/* A tracepoint (id 0: not used) and the field its program reads (offset -1:
 * none; size 1, 2, 4 or 8): at offset in the record, or, attached raw, as
 * argument number arg of its TP_PROTO (-1: unknown, then it reads the
 * record).  name: the tracepoint's name for a raw attachment (NULL: none). */
struct kvmstat_dur_tracepoint {
    uint64_t id;
    int32_t offset;
    uint32_t size;
    const char *name;
    int32_t arg;
};

struct kvmstat_dur_config {
    struct kvmstat_dur_tracepoint userspace_exit;  /* field: reason */
    struct kvmstat_dur_tracepoint marker;          /* field compared to marker_value */
    uint32_t marker_value;                         /* 1 (kvm_fpu load) or KVM_RUN */
    struct kvmstat_dur_tracepoint exit;            /* kvm_exit, field: exit reason */
    struct kvmstat_dur_tracepoint entry;           /* kvm_entry, no field */
    struct kvmstat_dur_tracepoint wakeup;          /* kvm_vcpu_wakeup, field: ns */
    int32_t wakeup_waited_offset;                  /* its 1-byte "waited" field */
    int32_t wakeup_waited_arg;                     /* ... as an argument, -1: unknown */
    uint32_t attach;       /* KVMSTAT_DUR_ATTACH_* */
    uint32_t max_entries;  /* histograms; 0: sized by the possible CPUs */
    uint32_t max_threads;  /* per-thread timestamps (least recently used go); 0: default */
    uint32_t tgid;         /* only this process (its programs end at once in others); 0: all */
};

/* One histogram, summed over CPUs. */
struct kvmstat_dur_entry {
    uint32_t kind;
    uint32_t tgid;
    uint64_t reason;
    uint64_t count;
    uint64_t sum_ns;
    uint64_t max_ns;   /* since the previous read */
    uint64_t buckets[40];  /* KVMSTAT_DUR_BUCKETS (cffi wants a number here) */
};

/* One vCPU thread's time since the engine first saw it (or was reset), by
 * state, each open state counted until the read: run_ns in KVM_RUN (the
 * guest's and the kernel's time, from the marker until the next exit to
 * user space), vmm_ns in the VMM (from there until the marker), guest_ns in
 * the guest (kvm_entry until kvm_exit: 0 where those do not fire), halt_ns
 * halted (kvm_vcpu_wakeup's lengths, part of run_ns). */
struct kvmstat_dur_vcpu {
    uint32_t tid;
    uint32_t tgid;
    uint64_t run_ns;
    uint64_t vmm_ns;
    uint64_t guest_ns;
    uint64_t halt_ns;
};

struct kvmstat_dur;

/*
 * Create the tables, load and attach the programs; measuring starts before
 * this returns.  log/log_size: the verifier's log of a program that fails
 * to load (may be NULL/0).  On failure *err says where (stage and
 * KVMSTAT_DUR_TP_* index), and nothing is left open.
 */
int kvmstat_dur_new(const struct kvmstat_dur_config *cfg, char *log,
                    unsigned int log_size, struct kvmstat_bpf_error *err,
                    struct kvmstat_dur **out);

/*
 * Fetch every histogram (summed over CPUs) into the engine and start a new
 * generation for max_ns.  Returns the number of histograms; copy them out
 * with kvmstat_dur_copy.  *dropped (if not NULL): durations lost because
 * the histogram table was full.
 */
int kvmstat_dur_read(struct kvmstat_dur *d, uint64_t *dropped);

/* Copy up to cap histograms of the last read; returns how many. */
int kvmstat_dur_copy(const struct kvmstat_dur *d, struct kvmstat_dur_entry *out,
                     unsigned int cap);

/*
 * Fetch every vCPU thread's times into the engine (kvmstat_dur_copy_vcpus
 * copies them out); *now_ns (if not NULL): the CLOCK_MONOTONIC time the
 * open states were counted until.  Returns the number of threads.
 */
int kvmstat_dur_read_vcpus(struct kvmstat_dur *d, uint64_t *now_ns);

/* Copy up to cap vCPUs of the last kvmstat_dur_read_vcpus; returns how many. */
int kvmstat_dur_copy_vcpus(const struct kvmstat_dur *d, struct kvmstat_dur_vcpu *out,
                           unsigned int cap);

/* Drop a thread's entry (a thread that ended: its open state would grow
 * forever).  0 also when there is none. */
int kvmstat_dur_forget_vcpu(struct kvmstat_dur *d, uint32_t tid);

/* Read by key iteration from now on, as on kernels without batch lookups
 * (for tests of that path). */
int kvmstat_dur_force_iteration(struct kvmstat_dur *d);

/* Start again from zero (histograms, pending timestamps, drops). */
int kvmstat_dur_reset(struct kvmstat_dur *d);

/* How tracepoint tp (KVMSTAT_DUR_TP_*) is attached: KVMSTAT_DUR_ATTACHED_*. */
int kvmstat_dur_attached(const struct kvmstat_dur *d, unsigned int tp);

/* Descriptors held; capacity of the histogram table; possible CPUs. */
int kvmstat_dur_fds(const struct kvmstat_dur *d);
int kvmstat_dur_max_entries(const struct kvmstat_dur *d);
int kvmstat_dur_ncpus(const struct kvmstat_dur *d);

/* Close every descriptor and free the engine.  NULL is allowed. */
void kvmstat_dur_free(struct kvmstat_dur *d);

/* cdef: end */

#endif
