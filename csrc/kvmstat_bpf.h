/*
 * kvmstat BPF counting engine: one small BPF program per tracepoint.
 *
 * Each program runs on every hit of its tracepoint, on every CPU, and adds 1
 * to a per-CPU counter.  Two layouts of the counters:
 *
 * - KVMSTAT_BPF_SLOTS (counts with no key): one per-CPU array slot per
 *   event, and per reason for events whose reason is broken down (plus one
 *   slot for the reasons no field asks for).  A hit costs one array
 *   lookup, which the kernel inlines, and one add: the closest BPF comes to
 *   a perf counter increment.  No per-process split (the only_tgid filter
 *   still works).
 * - KVMSTAT_BPF_BY_PROCESS: a per-CPU hash map entry keyed by (event,
 *   process id, reason), so every process's counts can be told apart (the
 *   per-VM rows): a hash lookup per hit.
 *
 * The reason is one of the tracepoint's arguments or a field of its record
 * (e.g. the exit reason of kvm_userspace_exit), read only for events with
 * reason fields; 0 otherwise.  The breakdown of a tracepoint by reason costs
 * one program run per hit, and the engine holds a fixed number of
 * descriptors: one attachment and one program per tracepoint, plus two or
 * three maps, whatever the number of CPUs or threads.
 *
 * Programs are assembled here (kvmstat_bpf_asm.h: no compiler or libbpf at
 * run time) and attached in one of two ways, per event:
 *
 * - raw tracepoint (BPF_PROG_TYPE_RAW_TRACEPOINT, BPF_RAW_TRACEPOINT_OPEN):
 *   the program gets the tracepoint's arguments (TP_PROTO) without the
 *   kernel first building the trace record.  Needs the tracepoint's name,
 *   and for a reason breakdown the index of the reason among the arguments.
 * - perf (BPF_PROG_TYPE_TRACEPOINT, perf_event_open(PERF_TYPE_TRACEPOINT,
 *   pid -1, cpu 0) and PERF_EVENT_IOC_SET_BPF): the program reads the trace
 *   record; a program attached that way runs for the hits on every CPU;
 *   the event is never enabled, so perf itself counts nothing.  These
 *   programs return 1, so other perf users of the same tracepoint still see
 *   every hit.
 *
 * Reading is one call: the counters are fetched (the slots with one lookup
 * per 4096 of them; the hash with BPF_MAP_LOOKUP_BATCH, or GET_NEXT_KEY +
 * LOOKUP_ELEM on kernels without it), the per-CPU values are summed and
 * folded into caller-defined fields (an event, all of its reasons or a set
 * of reason codes) and, per process, into caller-defined buckets.
 *
 * Everything is a file descriptor, so all of it is released when the
 * process exits, even when it is killed; nothing is pinned.
 *
 * All functions return >= 0 on success and -errno on failure.  No global
 * state; an engine must not be used from two threads at once, different
 * engines may.
 */
#ifndef KVMSTAT_BPF_H
#define KVMSTAT_BPF_H

#include <stdint.h>

/* cdef: begin (csrc/build_native.py hands the API from here to cffi) */

/* What a failing kvmstat_bpf_new/kvmstat_bpf_probe call was doing. */
#define KVMSTAT_BPF_STAGE_MAP    1  /* creating a map */
#define KVMSTAT_BPF_STAGE_LOAD   2  /* loading a program (see the log) */
#define KVMSTAT_BPF_STAGE_OPEN   3  /* perf_event_open of the tracepoint */
#define KVMSTAT_BPF_STAGE_ATTACH 4  /* PERF_EVENT_IOC_SET_BPF */
#define KVMSTAT_BPF_STAGE_CPUS   5  /* finding the number of possible CPUs */

/* Counter layouts (struct kvmstat_bpf_options.layout). */
#define KVMSTAT_BPF_BY_PROCESS 0  /* per-CPU hash keyed by event, process, reason */
#define KVMSTAT_BPF_SLOTS      1  /* per-CPU array, one slot per event and reason */
#define KVMSTAT_BPF_EMPTY      2  /* programs that return at once, counting nothing:
                                     the floor of a hit's cost (for benchmarks) */

/* How programs are attached (struct kvmstat_bpf_options.attach). */
#define KVMSTAT_BPF_ATTACH_AUTO 0  /* raw tracepoint where the event allows, else perf */
#define KVMSTAT_BPF_ATTACH_PERF 1  /* always a perf event (programs read the record) */
#define KVMSTAT_BPF_ATTACH_RAW  2  /* always a raw tracepoint (fails where it cannot) */

/* How an event ended up attached (kvmstat_bpf_attached). */
#define KVMSTAT_BPF_ATTACHED_PERF 1
#define KVMSTAT_BPF_ATTACHED_RAW  2

/* Reason codes below this get a slot each in the SLOTS layout; larger codes
 * a slot per code that a field names (at most KVMSTAT_BPF_MAX_SPARSE per
 * event: they are compared one by one). */
#define KVMSTAT_BPF_DENSE_REASONS 1024
#define KVMSTAT_BPF_MAX_SPARSE 32

/* Not a tgid: count every process. */
#define KVMSTAT_BPF_ALL_TGIDS (-1)

/* Most processes kvmstat_bpf_also_count accepts. */
#define KVMSTAT_BPF_MAX_ALSO 1024

/* Default count table: as many entries as fit per-CPU values of about
 * TABLE_BUDGET bytes (16384 entries up to 128 CPUs, 4681 with 448),
 * within TABLE_MIN..TABLE_MAX.  A VM fills a few dozen entries. */
#define KVMSTAT_BPF_TABLE_BUDGET (16u << 20)
#define KVMSTAT_BPF_TABLE_MIN 1024u
#define KVMSTAT_BPF_TABLE_MAX 16384u

struct kvmstat_bpf_event {
    uint64_t tracepoint_id;  /* <tracefs>/events/<sys>/<name>/id */
    int32_t reason_offset;   /* byte offset of the reason field, -1 for none */
    uint32_t reason_size;    /* 1, 2, 4 or 8 (ignored without a field) */
    const char *name;        /* the tracepoint's name, for a raw attachment; NULL: none */
    int32_t reason_arg;      /* index of the reason among the TP_PROTO arguments,
                                -1 if unknown (then a breakdown reads the record) */
};

/* How kvmstat_bpf_new counts. */
struct kvmstat_bpf_options {
    int64_t only_tgid;       /* KVMSTAT_BPF_ALL_TGIDS, or count only this process
                                and those given to kvmstat_bpf_also_count */
    uint32_t layout;         /* KVMSTAT_BPF_BY_PROCESS, _SLOTS or _EMPTY */
    uint32_t attach;         /* KVMSTAT_BPF_ATTACH_* */
    uint32_t max_entries;    /* BY_PROCESS: capacity of the count table, 0: default */
};

/* One output column of a read: an event, all of its reasons (ncodes 0, a
 * "parent") or only the listed reason codes (a "child"; aliases may list
 * several).  Codes are compared with the field zero-extended to 64 bits. */
struct kvmstat_bpf_field {
    uint32_t event;          /* index into the event list */
    uint32_t ncodes;
    const uint64_t *codes;   /* ncodes reason codes */
};

/* One raw map entry (summed over CPUs), for tests and debugging. */
struct kvmstat_bpf_entry {
    uint32_t event;
    uint32_t tgid;
    uint64_t reason;
    uint64_t count;
};

/* Where a failing call failed; filled by kvmstat_bpf_new/_probe. */
struct kvmstat_bpf_error {
    int stage;        /* KVMSTAT_BPF_STAGE_* */
    int event_index;  /* -1 if not event specific */
    int err;          /* positive errno */
};

struct kvmstat_bpf;

/*
 * Create the maps, load one program per event and attach it; counting
 * starts before this returns.  fields: the columns of _read (as for
 * _set_fields); in the SLOTS layout they also decide which events read a
 * reason and which reasons get a slot.
 *
 * opt->only_tgid: count only this process (KVMSTAT_BPF_ALL_TGIDS for all),
 *   and those given to kvmstat_bpf_also_count (one more map, for the kernel
 *   threads that work for a VM process outside its thread group).
 * opt->max_entries (BY_PROCESS): capacity of the count table, 0 for the
 *   default size (see KVMSTAT_BPF_TABLE_BUDGET).  The table is
 *   preallocated: the kernel reserves one u64 per possible CPU per entry,
 *   at once (so that counting a new entry never needs an allocation that
 *   could fail); hits that find the table full are counted as "dropped"
 *   (see _read).
 * opt->attach: with KVMSTAT_BPF_ATTACH_AUTO, an event is attached as a raw
 *   tracepoint when it has a name and, if its reason is read, a reason_arg;
 *   when the kernel refuses that, it falls back to perf for that event.
 * log/log_size: when a program fails to load, the verifier's log for it
 *   (the end of it if it is longer than the buffer), NUL-terminated;
 *   may be NULL/0.
 * On failure *err says where, and nothing is left open.
 */
int kvmstat_bpf_new(const struct kvmstat_bpf_event *events, unsigned int nevents,
                    const struct kvmstat_bpf_field *fields, unsigned int nfields,
                    const struct kvmstat_bpf_options *opt,
                    char *log, unsigned int log_size,
                    struct kvmstat_bpf_error *err, struct kvmstat_bpf **out);

/* Redefine the fields that _read fills (copied; replaces earlier ones).
 * In the SLOTS layout, -EINVAL for a reason code that has no slot (one
 * not named by the fields given to _new). */
int kvmstat_bpf_set_fields(struct kvmstat_bpf *eng,
                           const struct kvmstat_bpf_field *fields,
                           unsigned int nfields);

/* Replace the process -> bucket table (n pairs; tgids must be distinct). */
int kvmstat_bpf_set_buckets(struct kvmstat_bpf *eng, const uint32_t *tgids,
                            const uint32_t *buckets, unsigned int n);

/*
 * With only_tgid: count these processes too (at most KVMSTAT_BPF_MAX_ALSO;
 * replaces the previous set, keeping the counts already made).  -EINVAL for
 * an engine counting every process.
 */
int kvmstat_bpf_also_count(struct kvmstat_bpf *eng, const uint32_t *tgids,
                           unsigned int n);

/*
 * One bulk read.  totals[nfields] receives each field's count; if buckets is
 * not NULL it receives nbuckets x nfields counts (row = bucket) of the
 * processes that have a bucket < nbuckets; the others count only in totals.
 * SLOTS keep no process: with only_tgid every count is only_tgid's (its
 * bucket gets them), otherwise no bucket gets any.
 * *dropped (if not NULL) receives the number of hits lost because the table
 * was full.  Returns the number of map entries read.
 */
int kvmstat_bpf_read(struct kvmstat_bpf *eng, uint64_t *totals,
                     uint64_t *buckets, unsigned int nbuckets,
                     uint64_t *dropped);

/* Raw entries of the map: fills up to cap entries, returns how many there
 * are (call again with a bigger buffer when that is more than cap).  SLOTS:
 * one entry per slot with a count, tgid 0, except the slot of the reasons
 * no field names (tgid 4294967295). */
int kvmstat_bpf_dump(struct kvmstat_bpf *eng, struct kvmstat_bpf_entry *out,
                     unsigned int cap);

/*
 * Start again from zero: deletes every map entry, the sums kept for
 * forgotten processes and the dropped count.  Hits racing with the reset
 * land on either side of it.
 */
int kvmstat_bpf_reset(struct kvmstat_bpf *eng);

/*
 * Remove the entries of processes that have exited, so a long-running
 * monitor's table does not fill up with dead VMs: their counts are kept in
 * the totals (no longer in any bucket).  Returns the entries removed.
 * Only for exited processes: a hit between the read and the delete of a
 * live process's entry would be lost.  SLOTS: nothing to forget (0).
 */
int kvmstat_bpf_forget(struct kvmstat_bpf *eng, const uint32_t *tgids,
                       unsigned int n);

/* Hits the kernel skipped because a BPF program was already running on that
 * CPU (bpf_prog_info.recursion_misses, summed over the programs). */
int kvmstat_bpf_missed(struct kvmstat_bpf *eng, uint64_t *missed);

/* File descriptors held; possible CPUs (per-CPU values per entry); the
 * count table's capacity (SLOTS: array elements); 1 if reads use
 * BPF_MAP_LOOKUP_BATCH, 0 if key iteration. */
int kvmstat_bpf_fds(const struct kvmstat_bpf *eng);
int kvmstat_bpf_ncpus(const struct kvmstat_bpf *eng);
int kvmstat_bpf_max_entries(const struct kvmstat_bpf *eng);
int kvmstat_bpf_batch_reads(const struct kvmstat_bpf *eng);

/* The layout (KVMSTAT_BPF_BY_PROCESS, _SLOTS or _EMPTY); how event index is
 * attached (KVMSTAT_BPF_ATTACHED_PERF or _RAW). */
int kvmstat_bpf_layout(const struct kvmstat_bpf *eng);
int kvmstat_bpf_attached(const struct kvmstat_bpf *eng, unsigned int index);

/* Read by key iteration from now on (for tests of the fallback path). */
int kvmstat_bpf_force_iteration(struct kvmstat_bpf *eng);

/* Close every descriptor and free the engine.  NULL is allowed. */
void kvmstat_bpf_free(struct kvmstat_bpf *eng);

/*
 * Can this process use the engine?  Creates a map and loads a program, and
 * if tracepoint_id is not 0 also opens that tracepoint and attaches the
 * program (without enabling it), then closes everything.  0 or -errno with
 * *err filled in.
 */
int kvmstat_bpf_probe(uint64_t tracepoint_id, struct kvmstat_bpf_error *err);

/* cdef: end */

#endif
