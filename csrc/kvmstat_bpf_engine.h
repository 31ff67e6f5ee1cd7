/*
 * The BPF engine's private parts, shared by its source files:
 *   kvmstat_bpf.c       life cycle (create, attach, fields, buckets, free)
 *   kvmstat_bpf_prog.c  the counting program of one tracepoint
 *   kvmstat_bpf_read.c  fetching the count table, folding, reset, forget
 *   kvmstat_bpf_slots.c the SLOTS layout: planning, fetching, zeroing
 * The public contract is kvmstat_bpf.h.
 */
#ifndef KVMSTAT_BPF_ENGINE_H
#define KVMSTAT_BPF_ENGINE_H

#include "kvmstat_bpf.h"

#include <stdint.h>

/* The count table's key, as the programs write it on their stack. */
struct count_key {
    uint32_t event;
    uint32_t tgid;
    uint64_t reason;
};
_Static_assert(sizeof(struct count_key) == 16, "count_key must have no padding");
_Static_assert(sizeof(struct kvmstat_bpf_entry) == 24, "entry layout");

/* A child field's reason code, in a per-event segment sorted by code. */
struct child_code {
    uint64_t code;
    uint32_t field;
};

struct tgid_bucket {
    uint32_t tgid;
    uint32_t bucket;
};

/* The maps a counting program uses (-1: none). */
struct count_maps {
    int counts_fd;           /* BY_PROCESS: BPF_MAP_TYPE_PERCPU_HASH count_key -> u64;
                                SLOTS: BPF_MAP_TYPE_PERCPU_ARRAY of SLOTS_PER_ELEM u64 */
    int drops_fd;            /* BPF_MAP_TYPE_PERCPU_ARRAY [1] u64 */
    int also_fd;             /* with only_tgid: BPF_MAP_TYPE_HASH u32 tgid -> u32 */
};

/* SLOTS layout: the largest value of a per-CPU array element (the kernel
 * allows 32 KiB), in u64 slots; an event's slots never straddle two. */
#define SLOTS_PER_ELEM 4096u

/*
 * Where one event counts in the SLOTS layout: slots [base, base + n) of
 * element elem.  Without a reason (dense 0, nsparse 0) n is 1.  With one:
 * reason r < dense counts in base + r, the sparse codes in base + dense + k,
 * anything else in the last slot ("other": parents only).
 */
struct event_slots {
    uint32_t elem;
    uint32_t base;
    uint32_t n;
    uint32_t dense;
    uint32_t nsparse;
    uint64_t sparse[KVMSTAT_BPF_MAX_SPARSE];
    int with_reason;         /* the program reads the reason */
};

/* The shape of one event's program: what it counts into and how it is
 * attached. */
struct counter_shape {
    uint32_t index;                      /* event index (key of BY_PROCESS) */
    const struct kvmstat_bpf_event *ev;
    int with_reason;                     /* read the reason at all */
    int raw;                             /* raw tracepoint: reason from the args */
    int empty;                           /* return at once (KVMSTAT_BPF_EMPTY) */
    const struct event_slots *slots;     /* SLOTS layout; NULL for BY_PROCESS */
    int64_t only_tgid;
};

struct kvmstat_bpf {
    unsigned int nevents;
    int layout;              /* KVMSTAT_BPF_BY_PROCESS, _SLOTS or _EMPTY (which has
                                the maps of SLOTS, never written) */
    int64_t only_tgid;       /* or KVMSTAT_BPF_ALL_TGIDS */
    struct count_maps maps;
    uint32_t *also;          /* keys of maps.also_fd, sorted */
    unsigned int nalso;
    int *prog_fds;           /* nevents */
    int *link_fds;           /* nevents: the perf event or raw tracepoint */
    uint8_t *attached;       /* nevents: KVMSTAT_BPF_ATTACHED_* */
    uint8_t *with_reason;    /* nevents: a field breaks the event down by reason */
    struct event_slots *slots;  /* SLOTS: nevents */
    unsigned int nelems;     /* SLOTS: array elements */
    unsigned int elem_slots; /* SLOTS: u64 slots per element */
    uint64_t *slotbuf;       /* SLOTS: one element's per-CPU values */
    unsigned int ncpus;      /* possible CPUs: u64 values per entry */
    unsigned int max_entries;  /* capacity of the count table */
    int use_iteration;       /* the kernel lacks batch lookups of this map */

    /* Fields, in compressed rows per event: parents of event e are
     * pfield[pstart[e] .. pstart[e+1]), its child codes likewise. */
    unsigned int nfields;
    unsigned int *pstart, *pfield;
    unsigned int *cstart;
    struct child_code *ccode;

    struct tgid_bucket *buckets;  /* sorted by tgid */
    unsigned int nbuckets_map;

    /* Read buffers: one batch of keys and per-CPU values, and the summed
     * entries of the whole map. */
    struct count_key *keys;
    uint64_t *values;
    unsigned int batch_cap;
    struct kvmstat_bpf_entry *entries;
    unsigned int nentries, entries_cap;

    struct kvmstat_bpf_entry *retired;  /* tgid unused */
    unsigned int nretired, retired_cap;
};

/* First and largest number of entries fetched per BPF_MAP_LOOKUP_BATCH. */
#define BATCH_FIRST 256
#define BATCH_MAX   4096

/* kvmstat_bpf_prog.c */

/* 0 if the event's reason field can be loaded, -EINVAL if not. */
int kbpf_check_event(const struct kvmstat_bpf_event *ev);
/* Load the counting program of this shape (its fd, or -errno with the
 * verifier's log in log). */
int kbpf_load_counter(const struct counter_shape *shape, const struct count_maps *maps,
                      char *log, unsigned int log_size);

/* kvmstat_bpf_read.c */

/* The tgid of a SLOTS "other" entry: its reason matches no child. */
#define KBPF_OTHER_TGID UINT32_MAX

/* Fill eng->entries with every map entry (every slot with a count),
 * summed over CPUs; a SLOTS "other" slot has tgid KBPF_OTHER_TGID. */
int kbpf_fetch(struct kvmstat_bpf *eng);
/* Make room for more entries in eng->entries. */
int kbpf_reserve_entries(struct kvmstat_bpf *eng, unsigned int more);
/* Grow the batch buffers to cap entries. */
int kbpf_grow_batch(struct kvmstat_bpf *eng, unsigned int cap);

/* kvmstat_bpf_slots.c */

/* Give every event its slots (eng->with_reason set): -E2BIG when an event
 * has too many sparse codes. */
int kbpf_plan_slots(struct kvmstat_bpf *eng, const struct kvmstat_bpf_field *fields,
                    unsigned int nfields);
/* 0 if every reason code of the fields has a slot, -EINVAL if not. */
int kbpf_slots_cover(const struct kvmstat_bpf *eng, const struct kvmstat_bpf_field *fields,
                     unsigned int nfields);
/* Append an entry per slot with a count to eng->entries. */
int kbpf_fetch_slots(struct kvmstat_bpf *eng);
/* Zero every slot on every CPU. */
int kbpf_zero_slots(struct kvmstat_bpf *eng);

/* kvmstat_bpf.c */

int kbpf_cmp_u32(const void *a, const void *b);
/* The bucket of a process, or -1 if it has none. */
long kbpf_bucket_of(const struct kvmstat_bpf *eng, uint32_t tgid);

#endif
