/*
 * The BPF engine's reads: fetching the count table (batched, or by key
 * iteration on kernels without batch lookups), folding its entries into
 * the caller's fields and buckets, reset and forget.
 */
#include "kvmstat_array.h"
#include "kvmstat_bpf_engine.h"
#include "kvmstat_sys.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#ifndef ENOTSUPP
#define ENOTSUPP 524  /* kernel-internal "not supported", seen by user space */
#endif

/* ------------------------------------------------------------------------
 * Fetching the map
 */

int kbpf_reserve_entries(struct kvmstat_bpf *eng, unsigned int more)
{
    void *entries = eng->entries;
    int rc = kvmstat_array_reserve(&entries, &eng->entries_cap, eng->nentries, more,
                                   sizeof(*eng->entries), 64, UINT32_MAX);
    eng->entries = entries;
    return rc;
}

int kbpf_grow_batch(struct kvmstat_bpf *eng, unsigned int cap)
{
    struct count_key *k = realloc(eng->keys, cap * sizeof(*k));
    if (!k)
        return -ENOMEM;
    eng->keys = k;
    uint64_t *v = realloc(eng->values, (size_t)cap * eng->ncpus * sizeof(*v));
    if (!v)
        return -ENOMEM;
    eng->values = v;
    eng->batch_cap = cap;
    return 0;
}

static uint64_t sum_cpus(const uint64_t *v, unsigned int ncpus)
{
    uint64_t s = 0;
    for (unsigned int c = 0; c < ncpus; c++)
        s += v[c];
    return s;
}

/* Append n fetched keys with their per-CPU values. */
static int append_fetched(struct kvmstat_bpf *eng, unsigned int n)
{
    int rc = kbpf_reserve_entries(eng, n);
    if (rc < 0)
        return rc;
    for (unsigned int i = 0; i < n; i++) {
        struct kvmstat_bpf_entry *e = &eng->entries[eng->nentries++];
        e->event = eng->keys[i].event;
        e->tgid = eng->keys[i].tgid;
        e->reason = eng->keys[i].reason;
        e->count = sum_cpus(eng->values + (size_t)i * eng->ncpus, eng->ncpus);
    }
    return 0;
}

/*
 * BPF_MAP_LOOKUP_BATCH over the whole map.  A hash map is walked bucket by
 * bucket; the token is a bucket index (4 bytes, the buffer is larger).
 * ENOENT ends the walk (with the last entries), ENOSPC with nothing
 * returned means one hash bucket holds more entries than the buffer.
 */
static int fetch_batch(struct kvmstat_bpf *eng)
{
    uint64_t in_token[2] = { 0, 0 }, out_token[2] = { 0, 0 };
    int first = 1, calls = 0;

    for (;;) {
        uint32_t count = eng->batch_cap;
        int rc = ksys_map_lookup_batch(eng->maps.counts_fd, first ? NULL : in_token,
                                       out_token, eng->keys, eng->values, &count);
        calls++;
        if (rc < 0 && rc != -ENOENT) {
            if (rc == -ENOSPC && count == 0 && eng->batch_cap < UINT32_MAX / 2) {
                rc = kbpf_grow_batch(eng, eng->batch_cap * 2);
                if (rc < 0)
                    return rc;
                continue;  /* same token, bigger buffer */
            }
            return rc;
        }
        int arc = append_fetched(eng, count);
        if (arc < 0)
            return arc;
        if (rc == -ENOENT)
            break;
        memcpy(in_token, out_token, sizeof(in_token));
        first = 0;
    }
    /* A big table: fetch more per call next time. */
    if (calls > 2 && eng->batch_cap < BATCH_MAX)
        return kbpf_grow_batch(eng, eng->batch_cap * 2 > BATCH_MAX ? BATCH_MAX
                                                                   : eng->batch_cap * 2);
    return 0;
}

/* One entry of a key iteration: its values are in eng->values. */
static int append_visited(void *ctx, const void *key)
{
    struct kvmstat_bpf *eng = ctx;
    memcpy(&eng->keys[0], key, sizeof(eng->keys[0]));
    return append_fetched(eng, 1);
}

/* GET_NEXT_KEY + LOOKUP_ELEM, for kernels without batch lookups.  Entries
 * are only deleted by this engine, so the walk never restarts. */
static int fetch_iteration(struct kvmstat_bpf *eng)
{
    struct count_key key, next;
    return ksys_map_walk(eng->maps.counts_fd, &key, &next, sizeof(key), eng->values,
                         append_visited, eng);
}

int kbpf_fetch(struct kvmstat_bpf *eng)
{
    eng->nentries = 0;
    if (eng->slots)
        return kbpf_fetch_slots(eng);
    if (!eng->use_iteration) {
        int rc = fetch_batch(eng);
        /* Kernels before 5.6 do not know the command (EINVAL); some map
         * types never had it (ENOTSUPP).  Fall back once, for good. */
        if (rc == -EINVAL || rc == -ENOTSUPP || rc == -EOPNOTSUPP) {
            if (eng->nentries == 0) {
                eng->use_iteration = 1;
                return fetch_iteration(eng);
            }
        }
        return rc;
    }
    return fetch_iteration(eng);
}

/* ------------------------------------------------------------------------
 * Reading
 */

/* Add one entry's count to its fields' totals and, if bucket >= 0, to
 * that bucket's row. */
static void fold(const struct kvmstat_bpf *eng, const struct kvmstat_bpf_entry *e,
                 long bucket, uint64_t *totals, uint64_t *buckets)
{
    if (e->event >= eng->nevents)
        return;
    unsigned int nf = eng->nfields;
    uint64_t *row = bucket >= 0 ? buckets + (size_t)bucket * nf : NULL;

    for (unsigned int i = eng->pstart[e->event]; i < eng->pstart[e->event + 1]; i++) {
        totals[eng->pfield[i]] += e->count;
        if (row)
            row[eng->pfield[i]] += e->count;
    }
    if (e->tgid == KBPF_OTHER_TGID && eng->slots)
        return;  /* reasons no child names */
    /* Lower bound of the reason in the event's sorted codes. */
    unsigned int lo = eng->cstart[e->event], hi = eng->cstart[e->event + 1];
    while (lo < hi) {
        unsigned int mid = lo + (hi - lo) / 2;
        if (eng->ccode[mid].code < e->reason)
            lo = mid + 1;
        else
            hi = mid;
    }
    for (; lo < eng->cstart[e->event + 1] && eng->ccode[lo].code == e->reason; lo++) {
        totals[eng->ccode[lo].field] += e->count;
        if (row)
            row[eng->ccode[lo].field] += e->count;
    }
}

/* The process an entry counts for: SLOTS keep no process, so everything
 * belongs to the watched process (and its helpers), or to none. */
static uint32_t entry_tgid(const struct kvmstat_bpf *eng, const struct kvmstat_bpf_entry *e)
{
    if (!eng->slots)
        return e->tgid;
    return eng->only_tgid >= 0 ? (uint32_t)eng->only_tgid : KBPF_OTHER_TGID;
}

static int read_dropped(struct kvmstat_bpf *eng, uint64_t *dropped)
{
    uint32_t key = 0;
    /* The batch buffer always has room for one per-CPU value. */
    int rc = ksys_map_lookup(eng->maps.drops_fd, &key, eng->values);
    if (rc < 0)
        return rc;
    *dropped = sum_cpus(eng->values, eng->ncpus);
    return 0;
}

int kvmstat_bpf_read(struct kvmstat_bpf *eng, uint64_t *totals,
                     uint64_t *buckets, unsigned int nbuckets,
                     uint64_t *dropped)
{
    if (!eng || (!totals && eng->nfields))
        return -EINVAL;
    int rc = kbpf_fetch(eng);
    if (rc < 0)
        return rc;
    if (dropped) {
        rc = read_dropped(eng, dropped);
        if (rc < 0)
            return rc;
    }
    unsigned int nf = eng->nfields;
    if (nf)
        memset(totals, 0, nf * sizeof(*totals));
    if (buckets && nbuckets && nf)
        memset(buckets, 0, (size_t)nbuckets * nf * sizeof(*buckets));
    if (!buckets)
        nbuckets = 0;

    for (unsigned int i = 0; i < eng->nretired; i++)
        fold(eng, &eng->retired[i], -1, totals, NULL);
    for (unsigned int i = 0; i < eng->nentries; i++) {
        const struct kvmstat_bpf_entry *e = &eng->entries[i];
        long b = nbuckets ? kbpf_bucket_of(eng, entry_tgid(eng, e)) : -1;
        fold(eng, e, b < (long)nbuckets ? b : -1, totals, buckets);
    }
    return (int)eng->nentries;
}

int kvmstat_bpf_dump(struct kvmstat_bpf *eng, struct kvmstat_bpf_entry *out,
                     unsigned int cap)
{
    if (!eng || (cap && !out))
        return -EINVAL;
    int rc = kbpf_fetch(eng);
    if (rc < 0)
        return rc;
    unsigned int n = eng->nentries < cap ? eng->nentries : cap;
    if (n)
        memcpy(out, eng->entries, n * sizeof(*out));
    return (int)eng->nentries;
}

/* ------------------------------------------------------------------------
 * Reset, forget
 */

int kvmstat_bpf_reset(struct kvmstat_bpf *eng)
{
    if (!eng)
        return -EINVAL;
    if (eng->slots)
        return kbpf_zero_slots(eng);
    int rc = kbpf_fetch(eng);
    if (rc < 0)
        return rc;
    for (unsigned int i = 0; i < eng->nentries; i++) {
        const struct kvmstat_bpf_entry *e = &eng->entries[i];
        struct count_key key = { e->event, e->tgid, e->reason };
        rc = ksys_map_delete(eng->maps.counts_fd, &key);
        if (rc < 0 && rc != -ENOENT)
            return rc;
    }
    /* Zero every CPU's slot of the dropped counter. */
    uint32_t zero_key = 0;
    memset(eng->values, 0, eng->ncpus * sizeof(uint64_t));
    rc = ksys_map_update(eng->maps.drops_fd, &zero_key, eng->values);
    if (rc < 0)
        return rc;
    eng->nretired = 0;
    return 0;
}

/* Add a count to the retired sum of (event, reason). */
static int retire_count(struct kvmstat_bpf *eng, const struct kvmstat_bpf_entry *e)
{
    for (unsigned int i = 0; i < eng->nretired; i++) {
        struct kvmstat_bpf_entry *r = &eng->retired[i];
        if (r->event == e->event && r->reason == e->reason) {
            r->count += e->count;
            return 0;
        }
    }
    if (eng->nretired == eng->retired_cap) {
        unsigned int cap = eng->retired_cap ? eng->retired_cap * 2 : 16;
        struct kvmstat_bpf_entry *r = realloc(eng->retired, cap * sizeof(*r));
        if (!r)
            return -ENOMEM;
        eng->retired = r;
        eng->retired_cap = cap;
    }
    struct kvmstat_bpf_entry *r = &eng->retired[eng->nretired++];
    *r = *e;
    r->tgid = 0;
    return 0;
}

int kvmstat_bpf_forget(struct kvmstat_bpf *eng, const uint32_t *tgids,
                       unsigned int n)
{
    if (!eng || (n && !tgids))
        return -EINVAL;
    if (n == 0 || eng->slots)
        return 0;  /* SLOTS: nothing is kept per process */
    uint32_t *gone = malloc(n * sizeof(*gone));
    if (!gone)
        return -ENOMEM;
    memcpy(gone, tgids, n * sizeof(*gone));
    qsort(gone, n, sizeof(*gone), kbpf_cmp_u32);

    int rc = kbpf_fetch(eng), removed = 0;
    for (unsigned int i = 0; rc >= 0 && i < eng->nentries; i++) {
        const struct kvmstat_bpf_entry *e = &eng->entries[i];
        if (!bsearch(&e->tgid, gone, n, sizeof(*gone), kbpf_cmp_u32))
            continue;
        /* Make room first, so a deleted entry's count is never lost. */
        rc = retire_count(eng, &(struct kvmstat_bpf_entry){ e->event, 0, e->reason, 0 });
        if (rc < 0)
            break;
        struct count_key key = { e->event, e->tgid, e->reason };
        rc = ksys_map_delete(eng->maps.counts_fd, &key);
        if (rc == -ENOENT) {
            rc = 0;
            continue;
        }
        if (rc < 0)
            break;
        retire_count(eng, e);  /* cannot fail: the slot exists */
        removed++;
    }
    free(gone);
    return rc < 0 ? rc : removed;
}
