/*
 * kvmstat BPF counting engine: see kvmstat_bpf.h for the contract, and
 * kvmstat_bpf_engine.h for how the engine's files divide the work.
 *
 * Layout: an engine owns two maps (the per-CPU count table and a one-slot
 * per-CPU "dropped" counter), one program and one perf event per
 * tracepoint, the field definitions in a form that makes folding an entry
 * a binary search, the tgid -> bucket table (sorted), the read buffers, and
 * the sums of forgotten processes ("retired", keyed by event and reason).
 * This file: creating, attaching, configuring and freeing an engine.
 */
#include "kvmstat_bpf_engine.h"
#include "kvmstat_sys.h"

#include <errno.h>
#include <linux/bpf.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------
 * Creation
 */

static int set_error(struct kvmstat_bpf_error *err, int stage, int index, int rc)
{
    if (err) {
        err->stage = stage;
        err->event_index = index;
        err->err = -rc;
    }
    return rc;
}

/* The capacity of a count table whose per-CPU values take about
 * KVMSTAT_BPF_TABLE_BUDGET bytes, within sensible bounds. */
static unsigned int default_table_size(unsigned int ncpus)
{
    size_t n = KVMSTAT_BPF_TABLE_BUDGET / ((size_t)ncpus * sizeof(uint64_t));
    if (n > KVMSTAT_BPF_TABLE_MAX)
        n = KVMSTAT_BPF_TABLE_MAX;
    if (n < KVMSTAT_BPF_TABLE_MIN)
        n = KVMSTAT_BPF_TABLE_MIN;
    return (unsigned int)n;
}

static int valid_fields(const struct kvmstat_bpf_field *fields, unsigned int nfields,
                        unsigned int nevents)
{
    if (nfields && !fields)
        return 0;
    for (unsigned int f = 0; f < nfields; f++)
        if (fields[f].event >= nevents || (fields[f].ncodes && !fields[f].codes))
            return 0;
    return 1;
}

static int check_arguments(const struct kvmstat_bpf_event *events, unsigned int nevents,
                           const struct kvmstat_bpf_field *fields, unsigned int nfields,
                           const struct kvmstat_bpf_options *opt, struct kvmstat_bpf **out,
                           struct kvmstat_bpf_error *err)
{
    if (!out || !events || nevents == 0 || !opt ||
        opt->only_tgid < KVMSTAT_BPF_ALL_TGIDS || opt->only_tgid > INT32_MAX ||
        opt->layout > KVMSTAT_BPF_EMPTY ||
        opt->attach > KVMSTAT_BPF_ATTACH_RAW || !valid_fields(fields, nfields, nevents))
        return set_error(err, 0, -1, -EINVAL);
    for (unsigned int i = 0; i < nevents; i++)
        if (kbpf_check_event(&events[i]) < 0)
            return set_error(err, KVMSTAT_BPF_STAGE_LOAD, (int)i, -EINVAL);
    return 0;
}

/* An engine with its arrays allocated and every descriptor closed (-1). */
static struct kvmstat_bpf *engine_alloc(unsigned int nevents, const struct kvmstat_bpf_options *opt)
{
    struct kvmstat_bpf *eng = calloc(1, sizeof(*eng));

    if (!eng)
        return NULL;
    eng->nevents = nevents;
    eng->layout = (int)opt->layout;
    eng->only_tgid = opt->only_tgid;
    eng->maps.counts_fd = eng->maps.drops_fd = eng->maps.also_fd = -1;
    eng->prog_fds = malloc(nevents * sizeof(int));
    eng->link_fds = malloc(nevents * sizeof(int));
    eng->attached = calloc(nevents, 1);
    eng->with_reason = calloc(nevents, 1);
    eng->pstart = calloc(nevents + 1, sizeof(unsigned int));
    eng->cstart = calloc(nevents + 1, sizeof(unsigned int));
    if (opt->layout != KVMSTAT_BPF_BY_PROCESS)
        eng->slots = calloc(nevents, sizeof(*eng->slots));
    if (!eng->prog_fds || !eng->link_fds || !eng->attached || !eng->with_reason ||
        !eng->pstart || !eng->cstart || (opt->layout != KVMSTAT_BPF_BY_PROCESS && !eng->slots)) {
        kvmstat_bpf_free(eng);
        return NULL;
    }
    for (unsigned int i = 0; i < nevents; i++)
        eng->prog_fds[i] = eng->link_fds[i] = -1;
    return eng;
}

/* An event's program reads the reason only when a field breaks it down
 * (and the event has a place to read it from). */
static void mark_reasons(struct kvmstat_bpf *eng, const struct kvmstat_bpf_event *events,
                         const struct kvmstat_bpf_field *fields, unsigned int nfields)
{
    for (unsigned int f = 0; f < nfields; f++) {
        const struct kvmstat_bpf_event *ev = &events[fields[f].event];
        if (fields[f].ncodes && (ev->reason_offset >= 0 || ev->reason_arg >= 0))
            eng->with_reason[fields[f].event] = 1;
    }
}

/* The count table: a per-CPU hash sized by the number of CPUs, or the
 * per-CPU array of slots. */
static int create_counts(struct kvmstat_bpf *eng, unsigned int max_entries)
{
    if (eng->slots) {
        eng->max_entries = eng->nelems;
        return ksys_map_create(BPF_MAP_TYPE_PERCPU_ARRAY, sizeof(uint32_t),
                               eng->elem_slots * (uint32_t)sizeof(uint64_t), eng->nelems,
                               0, "kvmstat_slots");
    }
    /* Preallocated: a program that must allocate an entry on first use can
     * fail (the kernel's per-CPU element cache is refilled asynchronously,
     * so a burst of new entries finds it empty) and would lose that hit. */
    eng->max_entries = max_entries ? max_entries : default_table_size(eng->ncpus);
    return ksys_map_create(BPF_MAP_TYPE_PERCPU_HASH, sizeof(struct count_key),
                           sizeof(uint64_t), eng->max_entries, 0, "kvmstat_counts");
}

/* The dropped counter, then (sized by the number of CPUs it reveals) the
 * count table and, when counting one process, the "also" map. */
static int create_maps(struct kvmstat_bpf *eng, const struct kvmstat_bpf_options *opt,
                       struct kvmstat_bpf_error *err)
{
    int rc = ksys_map_create(BPF_MAP_TYPE_PERCPU_ARRAY, sizeof(uint32_t),
                             sizeof(uint64_t), 1, 0, "kvmstat_drops");
    if (rc < 0)
        return set_error(err, KVMSTAT_BPF_STAGE_MAP, -1, rc);
    eng->maps.drops_fd = rc;
    rc = ksys_possible_cpus(eng->maps.drops_fd);
    if (rc < 0)
        return set_error(err, KVMSTAT_BPF_STAGE_CPUS, -1, rc);
    eng->ncpus = (unsigned int)rc;
    if (eng->slots) {
        eng->slotbuf = malloc((size_t)eng->ncpus * eng->elem_slots * sizeof(uint64_t));
        if (!eng->slotbuf)
            return set_error(err, 0, -1, -ENOMEM);
    }
    rc = create_counts(eng, opt->max_entries);
    if (rc < 0)
        return set_error(err, KVMSTAT_BPF_STAGE_MAP, -1, rc);
    eng->maps.counts_fd = rc;
    if (opt->only_tgid >= 0) {
        /* Written only from user space: never allocates in a program. */
        rc = ksys_map_create(BPF_MAP_TYPE_HASH, sizeof(uint32_t), sizeof(uint32_t),
                             KVMSTAT_BPF_MAX_ALSO, BPF_F_NO_PREALLOC, "kvmstat_also");
        if (rc < 0)
            return set_error(err, KVMSTAT_BPF_STAGE_MAP, -1, rc);
        eng->maps.also_fd = rc;
    }
    return 0;
}

/* Can event i be attached as a raw tracepoint at all? */
static int raw_possible(const struct kvmstat_bpf *eng, const struct kvmstat_bpf_event *ev,
                        unsigned int i)
{
    return ev->name && ev->name[0] && (!eng->with_reason[i] || ev->reason_arg >= 0);
}

/* Load event i's program in this shape and attach it: as a raw tracepoint,
 * or through a (disabled) perf event of the tracepoint.  The perf events
 * stay disabled: a program attached to a tracepoint runs from the
 * tracepoint's perf probe, which is registered when the event is opened,
 * whatever the event's state.  A disabled event is not on any CPU's list
 * of perf events to feed, so perf does no work for it after the program
 * returns. */
static int attach_one(struct kvmstat_bpf *eng, const struct counter_shape *shape,
                      char *log, unsigned int log_size, struct kvmstat_bpf_error *err)
{
    unsigned int i = shape->index;
    int rc = kbpf_load_counter(shape, &eng->maps, log, log_size);

    if (rc < 0)
        return set_error(err, KVMSTAT_BPF_STAGE_LOAD, (int)i, rc);
    eng->prog_fds[i] = rc;
    if (shape->raw) {
        rc = ksys_raw_tracepoint_open(shape->ev->name, eng->prog_fds[i]);
        if (rc < 0)
            return set_error(err, KVMSTAT_BPF_STAGE_ATTACH, (int)i, rc);
        eng->link_fds[i] = rc;
        eng->attached[i] = KVMSTAT_BPF_ATTACHED_RAW;
        return 0;
    }
    rc = ksys_perf_open_tracepoint(shape->ev->tracepoint_id);
    if (rc < 0)
        return set_error(err, KVMSTAT_BPF_STAGE_OPEN, (int)i, rc);
    eng->link_fds[i] = rc;
    rc = ksys_perf_attach_bpf(eng->link_fds[i], eng->prog_fds[i]);
    if (rc < 0)
        return set_error(err, KVMSTAT_BPF_STAGE_ATTACH, (int)i, rc);
    eng->attached[i] = KVMSTAT_BPF_ATTACHED_PERF;
    return 0;
}

/* Attach every event the way opt->attach asks; with ATTACH_AUTO an event
 * the kernel refuses as a raw tracepoint (older kernels, a module's
 * tracepoint it cannot find by name) is attached through perf instead. */
static int attach_programs(struct kvmstat_bpf *eng, const struct kvmstat_bpf_event *events,
                           const struct kvmstat_bpf_options *opt, char *log,
                           unsigned int log_size, struct kvmstat_bpf_error *err)
{
    for (unsigned int i = 0; i < eng->nevents; i++) {
        struct counter_shape shape = {
            .index = i, .ev = &events[i], .with_reason = eng->with_reason[i],
            .slots = eng->slots ? &eng->slots[i] : NULL, .only_tgid = opt->only_tgid,
            .empty = eng->layout == KVMSTAT_BPF_EMPTY,
        };
        int raw_ok = raw_possible(eng, &events[i], i);
        if (opt->attach == KVMSTAT_BPF_ATTACH_RAW && !raw_ok)
            return set_error(err, KVMSTAT_BPF_STAGE_ATTACH, (int)i, -EOPNOTSUPP);
        shape.raw = opt->attach != KVMSTAT_BPF_ATTACH_PERF && raw_ok;
        int rc = attach_one(eng, &shape, log, log_size, err);
        if (rc < 0 && shape.raw && opt->attach == KVMSTAT_BPF_ATTACH_AUTO) {
            ksys_close(&eng->link_fds[i]);
            ksys_close(&eng->prog_fds[i]);
            shape.raw = 0;
            rc = attach_one(eng, &shape, log, log_size, err);
        }
        if (rc < 0)
            return rc;
    }
    return 0;
}

int kvmstat_bpf_new(const struct kvmstat_bpf_event *events, unsigned int nevents,
                    const struct kvmstat_bpf_field *fields, unsigned int nfields,
                    const struct kvmstat_bpf_options *opt,
                    char *log, unsigned int log_size,
                    struct kvmstat_bpf_error *err, struct kvmstat_bpf **out)
{
    if (log && log_size)
        log[0] = '\0';
    int rc = check_arguments(events, nevents, fields, nfields, opt, out, err);
    if (rc < 0)
        return rc;
    *out = NULL;
    struct kvmstat_bpf *eng = engine_alloc(nevents, opt);
    if (!eng)
        return set_error(err, 0, -1, -ENOMEM);
    mark_reasons(eng, events, fields, nfields);
    if (eng->slots && (rc = kbpf_plan_slots(eng, fields, nfields)) < 0)
        set_error(err, 0, -1, rc);
    if (rc == 0)
        rc = create_maps(eng, opt, err);
    if (rc == 0 && (rc = kbpf_grow_batch(eng, BATCH_FIRST)) < 0)
        set_error(err, 0, -1, rc);
    if (rc == 0 && (rc = kvmstat_bpf_set_fields(eng, fields, nfields)) < 0)
        set_error(err, 0, -1, rc);
    if (rc == 0)
        rc = attach_programs(eng, events, opt, log, log_size, err);
    if (rc < 0) {
        kvmstat_bpf_free(eng);
        return rc;
    }
    *out = eng;
    return 0;
}

/* Load the counting program (with throw-away maps) and, given a
 * tracepoint, attach it to a perf event of it. */
static int probe_attach(uint64_t tracepoint_id, const struct count_maps *maps,
                        struct kvmstat_bpf_error *err)
{
    static const struct kvmstat_bpf_event no_reason = { 0, -1, 0, NULL, -1 };
    struct counter_shape shape = { .ev = &no_reason, .only_tgid = KVMSTAT_BPF_ALL_TGIDS };
    int pfd = -1, efd = -1;
    int rc = pfd = kbpf_load_counter(&shape, maps, NULL, 0);

    if (rc < 0) {
        set_error(err, KVMSTAT_BPF_STAGE_LOAD, -1, rc);
    } else if (tracepoint_id) {
        rc = efd = ksys_perf_open_tracepoint(tracepoint_id);
        if (rc < 0)
            set_error(err, KVMSTAT_BPF_STAGE_OPEN, 0, rc);
        else if ((rc = ksys_perf_attach_bpf(efd, pfd)) < 0)
            set_error(err, KVMSTAT_BPF_STAGE_ATTACH, 0, rc);
    }
    ksys_close(&efd);
    ksys_close(&pfd);
    return rc < 0 ? rc : 0;
}

int kvmstat_bpf_probe(uint64_t tracepoint_id, struct kvmstat_bpf_error *err)
{
    struct count_maps maps = { -1, -1, -1 };
    int rc = maps.counts_fd = ksys_map_create(BPF_MAP_TYPE_PERCPU_HASH,
                                              sizeof(struct count_key), sizeof(uint64_t),
                                              1, BPF_F_NO_PREALLOC, "kvmstat_probe");
    if (rc >= 0)
        rc = maps.drops_fd = ksys_map_create(BPF_MAP_TYPE_PERCPU_ARRAY, sizeof(uint32_t),
                                             sizeof(uint64_t), 1, 0, "kvmstat_probe");
    if (rc < 0)
        set_error(err, KVMSTAT_BPF_STAGE_MAP, -1, rc);
    else
        rc = probe_attach(tracepoint_id, &maps, err);
    ksys_close(&maps.drops_fd);
    ksys_close(&maps.counts_fd);
    return rc;
}

/* ------------------------------------------------------------------------
 * Fields and buckets
 */

static int cmp_child_code(const void *a, const void *b)
{
    const struct child_code *x = a, *y = b;
    if (x->code != y->code)
        return x->code < y->code ? -1 : 1;
    return x->field < y->field ? -1 : x->field > y->field;
}

int kvmstat_bpf_set_fields(struct kvmstat_bpf *eng,
                           const struct kvmstat_bpf_field *fields,
                           unsigned int nfields)
{
    if (!eng || (nfields && !fields))
        return -EINVAL;
    unsigned int ne = eng->nevents;
    size_t nparents = 0, ncodes = 0;

    if (eng->slots && kbpf_slots_cover(eng, fields, nfields) < 0)
        return -EINVAL;

    for (unsigned int f = 0; f < nfields; f++) {
        if (fields[f].event >= ne || (fields[f].ncodes && !fields[f].codes))
            return -EINVAL;
        /* Codes only for events whose programs read the reason. */
        if (fields[f].ncodes && !eng->with_reason[fields[f].event])
            return -EINVAL;
        if (fields[f].ncodes)
            ncodes += fields[f].ncodes;
        else
            nparents++;
    }
    unsigned int *pstart = calloc(ne + 1, sizeof(*pstart));
    unsigned int *cstart = calloc(ne + 1, sizeof(*cstart));
    unsigned int *pfield = malloc((nparents ? nparents : 1) * sizeof(*pfield));
    struct child_code *ccode = malloc((ncodes ? ncodes : 1) * sizeof(*ccode));
    unsigned int *pfill = calloc(ne, sizeof(*pfill));
    unsigned int *cfill = calloc(ne, sizeof(*cfill));
    if (!pstart || !cstart || !pfield || !ccode || !pfill || !cfill) {
        free(pstart); free(cstart); free(pfield); free(ccode);
        free(pfill); free(cfill);
        return -ENOMEM;
    }

    /* Count per event, turn the counts into row starts, then fill. */
    for (unsigned int f = 0; f < nfields; f++) {
        if (fields[f].ncodes)
            cstart[fields[f].event + 1] += fields[f].ncodes;
        else
            pstart[fields[f].event + 1]++;
    }
    for (unsigned int e = 0; e < ne; e++) {
        pstart[e + 1] += pstart[e];
        cstart[e + 1] += cstart[e];
    }
    for (unsigned int f = 0; f < nfields; f++) {
        unsigned int e = fields[f].event;
        if (!fields[f].ncodes) {
            pfield[pstart[e] + pfill[e]++] = f;
            continue;
        }
        for (unsigned int k = 0; k < fields[f].ncodes; k++) {
            struct child_code *c = &ccode[cstart[e] + cfill[e]++];
            c->code = fields[f].codes[k];
            c->field = f;
        }
    }
    for (unsigned int e = 0; e < ne; e++)
        qsort(ccode + cstart[e], cstart[e + 1] - cstart[e], sizeof(*ccode),
              cmp_child_code);
    free(pfill);
    free(cfill);

    free(eng->pstart); free(eng->pfield); free(eng->cstart); free(eng->ccode);
    eng->pstart = pstart;
    eng->pfield = pfield;
    eng->cstart = cstart;
    eng->ccode = ccode;
    eng->nfields = nfields;
    return 0;
}

int kbpf_cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static int cmp_tgid_bucket(const void *a, const void *b)
{
    const struct tgid_bucket *x = a, *y = b;
    return x->tgid < y->tgid ? -1 : x->tgid > y->tgid;
}

int kvmstat_bpf_set_buckets(struct kvmstat_bpf *eng, const uint32_t *tgids,
                            const uint32_t *buckets, unsigned int n)
{
    if (!eng || (n && (!tgids || !buckets)))
        return -EINVAL;
    struct tgid_bucket *t = malloc((n ? n : 1) * sizeof(*t));
    if (!t)
        return -ENOMEM;
    for (unsigned int i = 0; i < n; i++) {
        t[i].tgid = tgids[i];
        t[i].bucket = buckets[i];
    }
    qsort(t, n, sizeof(*t), cmp_tgid_bucket);
    for (unsigned int i = 1; i < n; i++) {
        if (t[i].tgid == t[i - 1].tgid) {
            free(t);
            return -EINVAL;
        }
    }
    free(eng->buckets);
    eng->buckets = t;
    eng->nbuckets_map = n;
    return 0;
}

static int sorted_contains(const uint32_t *v, unsigned int n, uint32_t x)
{
    return bsearch(&x, v, n, sizeof(*v), kbpf_cmp_u32) != NULL;
}

int kvmstat_bpf_also_count(struct kvmstat_bpf *eng, const uint32_t *tgids,
                           unsigned int n)
{
    if (!eng || (n && !tgids))
        return -EINVAL;
    if (eng->maps.also_fd < 0 || n > KVMSTAT_BPF_MAX_ALSO)
        return -EINVAL;
    uint32_t *want = malloc((n ? n : 1) * sizeof(*want));
    if (!want)
        return -ENOMEM;
    if (n)
        memcpy(want, tgids, n * sizeof(*want));
    qsort(want, n, sizeof(*want), kbpf_cmp_u32);
    unsigned int m = 0;
    for (unsigned int i = 0; i < n; i++)  /* drop duplicates */
        if (m == 0 || want[m - 1] != want[i])
            want[m++] = want[i];

    /* Add first, then remove: a process in both sets is never missing. */
    uint32_t one = 1;
    for (unsigned int i = 0; i < m; i++) {
        if (sorted_contains(eng->also, eng->nalso, want[i]))
            continue;
        int rc = ksys_map_update(eng->maps.also_fd, &want[i], &one);
        if (rc < 0) {
            free(want);
            return rc;
        }
    }
    for (unsigned int i = 0; i < eng->nalso; i++) {
        if (sorted_contains(want, m, eng->also[i]))
            continue;
        int rc = ksys_map_delete(eng->maps.also_fd, &eng->also[i]);
        if (rc < 0 && rc != -ENOENT) {
            free(want);
            return rc;
        }
    }
    free(eng->also);
    eng->also = want;
    eng->nalso = m;
    return 0;
}

long kbpf_bucket_of(const struct kvmstat_bpf *eng, uint32_t tgid)
{
    struct tgid_bucket want = { tgid, 0 };
    const struct tgid_bucket *t = bsearch(&want, eng->buckets, eng->nbuckets_map,
                                          sizeof(want), cmp_tgid_bucket);
    return t ? (long)t->bucket : -1;
}

/* ------------------------------------------------------------------------
 * Introspection and teardown
 */

int kvmstat_bpf_missed(struct kvmstat_bpf *eng, uint64_t *missed)
{
    if (!eng || !missed)
        return -EINVAL;
    uint64_t sum = 0;
    for (unsigned int i = 0; i < eng->nevents; i++) {
        uint64_t one;
        int rc = ksys_prog_recursion_misses(eng->prog_fds[i], &one);
        if (rc < 0)
            return rc;
        sum += one;
    }
    *missed = sum;
    return 0;
}

int kvmstat_bpf_fds(const struct kvmstat_bpf *eng)
{
    return eng ? (int)(2 * eng->nevents + 2 + (eng->maps.also_fd >= 0)) : -EINVAL;
}

int kvmstat_bpf_ncpus(const struct kvmstat_bpf *eng)
{
    return eng ? (int)eng->ncpus : -EINVAL;
}

int kvmstat_bpf_max_entries(const struct kvmstat_bpf *eng)
{
    return eng ? (int)eng->max_entries : -EINVAL;
}

int kvmstat_bpf_batch_reads(const struct kvmstat_bpf *eng)
{
    return eng ? !eng->use_iteration : -EINVAL;
}

int kvmstat_bpf_layout(const struct kvmstat_bpf *eng)
{
    return eng ? eng->layout : -EINVAL;
}

int kvmstat_bpf_attached(const struct kvmstat_bpf *eng, unsigned int index)
{
    return eng && index < eng->nevents ? eng->attached[index] : -EINVAL;
}

int kvmstat_bpf_force_iteration(struct kvmstat_bpf *eng)
{
    if (!eng)
        return -EINVAL;
    eng->use_iteration = 1;
    return 0;
}

void kvmstat_bpf_free(struct kvmstat_bpf *eng)
{
    if (!eng)
        return;
    /* Closing the perf events detaches the programs; the maps go with the
     * last program that uses them. */
    for (unsigned int i = 0; i < eng->nevents; i++) {
        if (eng->link_fds)
            ksys_close(&eng->link_fds[i]);
        if (eng->prog_fds)
            ksys_close(&eng->prog_fds[i]);
    }
    ksys_close(&eng->maps.also_fd);
    ksys_close(&eng->maps.drops_fd);
    ksys_close(&eng->maps.counts_fd);
    free(eng->prog_fds);
    free(eng->link_fds);
    free(eng->attached);
    free(eng->with_reason);
    free(eng->slots);
    free(eng->slotbuf);
    free(eng->pstart);
    free(eng->pfield);
    free(eng->cstart);
    free(eng->ccode);
    free(eng->buckets);
    free(eng->also);
    free(eng->keys);
    free(eng->values);
    free(eng->entries);
    free(eng->retired);
    free(eng);
}