/*
 * The BPF engine's SLOTS layout: counts with no key, in a per-CPU array.
 *
 * Every event gets a run of u64 slots (struct event_slots) inside one
 * element of the array; an element holds up to SLOTS_PER_ELEM of them, so
 * most configurations fit in one element, which one lookup reads on every
 * CPU at once.
 */
#include "kvmstat_bpf_engine.h"
#include "kvmstat_sys.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int has_code(const uint64_t *v, unsigned int n, uint64_t x)
{
    for (unsigned int i = 0; i < n; i++)
        if (v[i] == x)
            return 1;
    return 0;
}

/* The reasons event e's fields name: dense part and sparse codes. */
static int plan_reasons(struct event_slots *sl, unsigned int e,
                        const struct kvmstat_bpf_field *fields, unsigned int nfields)
{
    sl->dense = 0;
    sl->nsparse = 0;
    for (unsigned int f = 0; f < nfields; f++) {
        if (fields[f].event != e)
            continue;
        for (unsigned int k = 0; k < fields[f].ncodes; k++) {
            uint64_t code = fields[f].codes[k];
            if (code < KVMSTAT_BPF_DENSE_REASONS) {
                if (code + 1 > sl->dense)
                    sl->dense = (uint32_t)code + 1;
            } else if (!has_code(sl->sparse, sl->nsparse, code)) {
                if (sl->nsparse == KVMSTAT_BPF_MAX_SPARSE)
                    return -E2BIG;
                sl->sparse[sl->nsparse++] = code;
            }
        }
    }
    qsort(sl->sparse, sl->nsparse, sizeof(sl->sparse[0]), cmp_u64);
    return 0;
}

int kbpf_plan_slots(struct kvmstat_bpf *eng, const struct kvmstat_bpf_field *fields,
                    unsigned int nfields)
{
    uint32_t elem = 0, used = 0, widest = 1;

    for (unsigned int e = 0; e < eng->nevents; e++) {
        struct event_slots *sl = &eng->slots[e];
        memset(sl, 0, sizeof(*sl));
        sl->with_reason = eng->with_reason[e];
        if (sl->with_reason) {
            int rc = plan_reasons(sl, e, fields, nfields);
            if (rc < 0)
                return rc;
        }
        /* With a reason: one more slot for the reasons no field names. */
        sl->n = sl->with_reason ? sl->dense + sl->nsparse + 1 : 1;
        if (used + sl->n > SLOTS_PER_ELEM) {
            elem++;
            used = 0;
        }
        sl->elem = elem;
        sl->base = used;
        used += sl->n;
        if (used > widest)
            widest = used;
    }
    eng->nelems = elem + 1;
    eng->elem_slots = widest;
    return 0;
}

int kbpf_slots_cover(const struct kvmstat_bpf *eng, const struct kvmstat_bpf_field *fields,
                     unsigned int nfields)
{
    for (unsigned int f = 0; f < nfields; f++) {
        const struct event_slots *sl = &eng->slots[fields[f].event];
        for (unsigned int k = 0; k < fields[f].ncodes; k++) {
            uint64_t code = fields[f].codes[k];
            if (!sl->with_reason)
                return -EINVAL;
            if (code >= sl->dense && !has_code(sl->sparse, sl->nsparse, code))
                return -EINVAL;
        }
    }
    return 0;
}

/* The entry of slot i of event e (with its count). */
static struct kvmstat_bpf_entry slot_entry(const struct event_slots *sl, unsigned int e,
                                           uint32_t i, uint64_t count)
{
    struct kvmstat_bpf_entry out = { e, 0, 0, count };

    if (!sl->with_reason)
        return out;
    if (i < sl->dense)
        out.reason = i;
    else if (i < sl->dense + sl->nsparse)
        out.reason = sl->sparse[i - sl->dense];
    else
        out.tgid = KBPF_OTHER_TGID;
    return out;
}

static int fetch_element(struct kvmstat_bpf *eng, uint32_t elem)
{
    int rc = ksys_map_lookup(eng->maps.counts_fd, &elem, eng->slotbuf);
    if (rc < 0)
        return rc;
    for (unsigned int e = 0; e < eng->nevents; e++) {
        const struct event_slots *sl = &eng->slots[e];
        if (sl->elem != elem)
            continue;
        for (uint32_t i = 0; i < sl->n; i++) {
            uint64_t sum = 0;
            for (unsigned int c = 0; c < eng->ncpus; c++)
                sum += eng->slotbuf[(size_t)c * eng->elem_slots + sl->base + i];
            if (!sum)
                continue;
            if (eng->nentries == eng->entries_cap) {
                rc = kbpf_reserve_entries(eng, 1);
                if (rc < 0)
                    return rc;
            }
            eng->entries[eng->nentries++] = slot_entry(sl, e, i, sum);
        }
    }
    return 0;
}

int kbpf_fetch_slots(struct kvmstat_bpf *eng)
{
    for (uint32_t elem = 0; elem < eng->nelems; elem++) {
        int rc = fetch_element(eng, elem);
        if (rc < 0)
            return rc;
    }
    return 0;
}

int kbpf_zero_slots(struct kvmstat_bpf *eng)
{
    memset(eng->slotbuf, 0, (size_t)eng->ncpus * eng->elem_slots * sizeof(uint64_t));
    for (uint32_t elem = 0; elem < eng->nelems; elem++) {
        int rc = ksys_map_update(eng->maps.counts_fd, &elem, eng->slotbuf);
        if (rc < 0)
            return rc;
    }
    return 0;
}
