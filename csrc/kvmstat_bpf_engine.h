/*
 * The BPF engine's private parts, shared by its source files:
 *   kvmstat_bpf.c       life cycle (create, attach, fields, buckets, free)
 *   kvmstat_bpf_prog.c  the counting program of one tracepoint
 *   kvmstat_bpf_read.c  fetching the count table, folding, reset, forget
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
    int counts_fd;           /* BPF_MAP_TYPE_PERCPU_HASH count_key -> u64 */
    int drops_fd;            /* BPF_MAP_TYPE_PERCPU_ARRAY [1] u64 */
    int also_fd;             /* with only_tgid: BPF_MAP_TYPE_HASH u32 tgid -> u32 */
};

struct kvmstat_bpf {
    unsigned int nevents;
    struct count_maps maps;
    uint32_t *also;          /* keys of maps.also_fd, sorted */
    unsigned int nalso;
    int *prog_fds;           /* nevents */
    int *perf_fds;           /* nevents */
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
/* Load the counting program of event number index (its fd, or -errno with
 * the verifier's log in log). */
int kbpf_load_counter(uint32_t index, const struct kvmstat_bpf_event *ev,
                      int64_t only_tgid, const struct count_maps *maps,
                      char *log, unsigned int log_size);

/* kvmstat_bpf_read.c */

/* Fill eng->entries with every map entry, summed over CPUs. */
int kbpf_fetch(struct kvmstat_bpf *eng);
/* Grow the batch buffers to cap entries. */
int kbpf_grow_batch(struct kvmstat_bpf *eng, unsigned int cap);

/* kvmstat_bpf.c */

int kbpf_cmp_u32(const void *a, const void *b);
/* The bucket of a process, or -1 if it has none. */
long kbpf_bucket_of(const struct kvmstat_bpf *eng, uint32_t tgid);

#endif
