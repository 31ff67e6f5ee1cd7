/*
 * kvmstat native core: counting tracepoints with perf_event_open.
 *
 * A "counter set" is a list of events (tracepoint id + optional filter) opened
 * as one perf group per target.  A target is either an online CPU
 * (system-wide counting, pid = -1) or a thread id (cpu = -1).  Every group is
 * tagged with a caller-chosen bucket number (e.g. the index of the VM the
 * thread belongs to) so that one read call can return per-bucket sums.
 *
 * Targets can be added while the set runs and retired when their thread ends;
 * a retired group's last counts are kept in its bucket, so totals never go
 * backwards.
 *
 * In KVMSTAT_PER_THREAD_INHERIT mode a group also counts every thread its
 * target creates after the group was opened (perf "inherit", limited to
 * CLONE_THREAD children where the kernel supports it), including threads
 * that have ended since: a process is followed from the moment its threads
 * are opened, without adding groups for new threads.  Retiring such a group
 * stops the counting of its target's descendants too, so retire it only
 * when none can be alive (e.g. the whole process has exited).
 *
 * All functions return >= 0 on success and -errno on failure.  No global
 * state; a set must not be used from two threads at once, different sets may.
 */
#ifndef KVMSTAT_NATIVE_H
#define KVMSTAT_NATIVE_H

#include <stdint.h>

/* cdef: begin (csrc/build_native.py hands the API from here to cffi) */

#define KVMSTAT_PER_CPU    0  /* targets are CPU numbers */
#define KVMSTAT_PER_THREAD 1  /* targets are thread ids */
#define KVMSTAT_PER_THREAD_INHERIT 2  /* thread ids, counting threads they create */

struct kvmstat_event {
    uint64_t tracepoint_id;  /* <tracefs>/events/<sys>/<name>/id */
    const char *filter;      /* NULL or "" for none, e.g. "exit_reason==12" */
};

/* Where a failing call failed: filled on error by open/add. */
struct kvmstat_error {
    int event_index;  /* index into the event list, -1 if not event specific */
    int target;       /* CPU or thread id, -1 if not target specific */
    int err;          /* positive errno */
};

struct kvmstat_set;

/* Create an empty set for these events (copied; the caller may free them).
 * mode is KVMSTAT_PER_CPU, KVMSTAT_PER_THREAD or KVMSTAT_PER_THREAD_INHERIT. */
int kvmstat_set_new(const struct kvmstat_event *events, unsigned int nevents,
                    int mode, struct kvmstat_set **out);

/* Open one group for a target, tagged with bucket (>= 0).  If the set is
 * enabled, the new group starts counting at once.  Returns the group's slot
 * number (>= 0) or -errno with *err filled in. */
int kvmstat_set_add(struct kvmstat_set *set, int target, unsigned int bucket,
                    struct kvmstat_error *err);

/* Fold the group's current counts into its bucket's retired sums and close
 * its file descriptors.  The slot is free afterwards. */
int kvmstat_set_retire(struct kvmstat_set *set, int slot);

int kvmstat_set_enable(struct kvmstat_set *set);
int kvmstat_set_disable(struct kvmstat_set *set);
/* Count from zero again: totals and every bucket read 0 right afterwards
 * (live groups, retired sums, and what ended inherited threads counted). */
int kvmstat_set_reset(struct kvmstat_set *set);

/* Forget the retired sums of bucket, so that the bucket number can be given
 * to new groups; totals keep them.  -EBUSY while a live group uses it. */
int kvmstat_set_clear_bucket(struct kvmstat_set *set, unsigned int bucket);

/* Number of live groups, and file descriptors held (groups x events). */
int kvmstat_set_groups(const struct kvmstat_set *set);
int kvmstat_set_fds(const struct kvmstat_set *set);

/* One bulk read of every live group leader.
 * totals[nevents] receives the per-event sum over all groups (live and
 * retired).  If buckets is not NULL it receives nbuckets x nevents sums
 * (row = bucket); groups whose bucket >= nbuckets count only in totals.
 * Returns the number of live groups read. */
int kvmstat_set_read(struct kvmstat_set *set, uint64_t *totals,
                     uint64_t *buckets, unsigned int nbuckets);

/* Close every descriptor and free the set.  NULL is allowed. */
void kvmstat_set_free(struct kvmstat_set *set);

/* cdef: end */

#endif
