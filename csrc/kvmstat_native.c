/*
 * kvmstat native core: see kvmstat_native.h for the contract.
 *
 * Layout: a set owns a copy of the event list, a growable array of group
 * slots (one perf group per target) and the "retired" sums, i.e. the last
 * counts of groups that were closed, overall and per bucket.  Reading adds
 * the retired sums to what the live leaders report, so totals never go
 * backwards when a thread ends.
 */
#define _GNU_SOURCE
#include "kvmstat_native.h"
#include "kvmstat_sys.h"

#include <errno.h>
#include <linux/perf_event.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

struct group {
    int *fds;             /* nevents descriptors, fds[0] is the leader; NULL = free slot */
    uint64_t *last;       /* nevents values of the last successful read */
    unsigned int bucket;
};

struct kvmstat_set {
    int mode;
    int enabled;
    int inherit_thread;   /* PER_THREAD_INHERIT: kernel takes attr.inherit_thread */
    unsigned int nevents;
    uint64_t *tp_ids;     /* nevents tracepoint ids */
    char **filters;       /* nevents copies, NULL for none */

    struct group *groups; /* slot array; free slots have fds == NULL */
    unsigned int nslots;
    unsigned int nlive;

    uint64_t *retired;    /* nevents sums of retired groups */
    uint64_t *retired_b;  /* retired_rows x nevents sums, row = bucket */
    unsigned int retired_rows;

    uint64_t *readbuf;    /* 1 + nevents: nr followed by the values */
};

static int perf_open(const struct kvmstat_set *set, unsigned int i, int target,
                     int group_fd)
{
    struct perf_event_attr attr;

    memset(&attr, 0, sizeof(attr));
    attr.type = PERF_TYPE_TRACEPOINT;
    attr.size = sizeof(attr);
    attr.config = set->tp_ids[i];
    attr.sample_period = 0;                 /* counting only, no samples */
    attr.read_format = PERF_FORMAT_GROUP;   /* leader read returns all members */
    /* Only the leader starts disabled: members follow their leader's state. */
    attr.disabled = group_fd == -1;

    int per_cpu = set->mode == KVMSTAT_PER_CPU;
    int pid = per_cpu ? -1 : target;
    int cpu = per_cpu ? target : -1;
    if (set->mode == KVMSTAT_PER_THREAD_INHERIT) {
        attr.inherit = 1;
        attr.inherit_thread = set->inherit_thread;
    }
    return ksys_perf_event_open(&attr, pid, cpu, group_fd);
}

/* perf_open, except that a kernel older than 5.13, which rejects
 * attr.inherit_thread with EINVAL, gets plain inherit (then processes
 * forked by a target are counted too) for this and every later event. */
static int perf_open_member(struct kvmstat_set *set, unsigned int i, int target,
                            int group_fd)
{
    int fd = perf_open(set, i, target, group_fd);

    if (fd == -EINVAL && set->inherit_thread) {
        set->inherit_thread = 0;
        fd = perf_open(set, i, target, group_fd);
        if (fd < 0)
            set->inherit_thread = 1;  /* not the reason: keep asking for it */
    }
    return fd;
}

static void close_fds(int *fds, unsigned int n)
{
    for (unsigned int i = 0; i < n; i++)
        if (fds[i] >= 0)
            close(fds[i]);
}

/* Read one group leader; its values are then in g->last.  While the
 * target thread is exiting the kernel may refuse the read for a moment
 * (ECHILD, ESRCH, ENODEV): the group then keeps its last values, which the
 * next read brings up to date, so sums never go backwards.  Returns 0 or
 * -errno. */
static int read_group(struct kvmstat_set *set, struct group *g)
{
    size_t want = (1 + (size_t)set->nevents) * sizeof(uint64_t);
    ssize_t n = read(g->fds[0], set->readbuf, want);

    if (n < 0) {
        int e = errno;
        return (e == ECHILD || e == ESRCH || e == ENODEV) ? 0 : -e;
    }
    /* A short read or a different member count would misalign the sums. */
    if ((size_t)n != want || set->readbuf[0] != set->nevents)
        return -EIO;
    memcpy(g->last, set->readbuf + 1, set->nevents * sizeof(*g->last));
    return 0;
}

static void free_group(struct group *g)
{
    free(g->fds);
    free(g->last);
    g->fds = NULL;
    g->last = NULL;
}

static void add_values(uint64_t *dst, const uint64_t *src, unsigned int n)
{
    for (unsigned int i = 0; i < n; i++)
        dst[i] += src[i];
}

int kvmstat_set_new(const struct kvmstat_event *events, unsigned int nevents,
                    int mode, struct kvmstat_set **out)
{
    struct kvmstat_set *set;

    if (!out || !events || nevents == 0 ||
        (mode != KVMSTAT_PER_CPU && mode != KVMSTAT_PER_THREAD &&
         mode != KVMSTAT_PER_THREAD_INHERIT))
        return -EINVAL;
    *out = NULL;

    set = calloc(1, sizeof(*set));
    if (!set)
        return -ENOMEM;
    set->mode = mode;
    set->inherit_thread = mode == KVMSTAT_PER_THREAD_INHERIT;
    set->nevents = nevents;
    set->tp_ids = calloc(nevents, sizeof(*set->tp_ids));
    set->filters = calloc(nevents, sizeof(*set->filters));
    set->retired = calloc(nevents, sizeof(*set->retired));
    set->readbuf = calloc(1 + (size_t)nevents, sizeof(*set->readbuf));
    if (!set->tp_ids || !set->filters || !set->retired || !set->readbuf)
        goto nomem;

    for (unsigned int i = 0; i < nevents; i++) {
        set->tp_ids[i] = events[i].tracepoint_id;
        if (events[i].filter && events[i].filter[0]) {
            set->filters[i] = strdup(events[i].filter);
            if (!set->filters[i])
                goto nomem;
        }
    }
    *out = set;
    return 0;

nomem:
    kvmstat_set_free(set);
    return -ENOMEM;
}

/* Find a free slot, growing the slot array when all are taken. */
static int free_slot(struct kvmstat_set *set)
{
    for (unsigned int s = 0; s < set->nslots; s++)
        if (!set->groups[s].fds)
            return (int)s;

    unsigned int n = set->nslots ? set->nslots * 2 : 8;
    struct group *g = realloc(set->groups, n * sizeof(*g));
    if (!g)
        return -ENOMEM;
    memset(g + set->nslots, 0, (n - set->nslots) * sizeof(*g));
    set->groups = g;
    int s = (int)set->nslots;
    set->nslots = n;
    return s;
}

static void set_error(struct kvmstat_error *err, int index, int target, int e)
{
    if (err) {
        err->event_index = index;
        err->target = target;
        err->err = -e;
    }
}

int kvmstat_set_add(struct kvmstat_set *set, int target, unsigned int bucket,
                    struct kvmstat_error *err)
{
    if (!set || target < 0 || bucket > INT32_MAX) {
        set_error(err, -1, target, -EINVAL);
        return -EINVAL;
    }
    int slot = free_slot(set);
    int *fds = malloc(set->nevents * sizeof(*fds));
    uint64_t *last = calloc(set->nevents, sizeof(*last));
    if (slot < 0 || !fds || !last) {
        free(fds);
        free(last);
        set_error(err, -1, target, -ENOMEM);
        return -ENOMEM;
    }
    for (unsigned int i = 0; i < set->nevents; i++)
        fds[i] = -1;

    int rc = 0;
    unsigned int i;
    for (i = 0; i < set->nevents; i++) {
        rc = perf_open_member(set, i, target, i == 0 ? -1 : fds[0]);
        if (rc < 0)
            break;
        fds[i] = rc;
        if (set->filters[i] &&
            ioctl(fds[i], PERF_EVENT_IOC_SET_FILTER, set->filters[i]) < 0) {
            rc = -errno;
            break;
        }
        rc = 0;
    }
    /* Start the whole group at once, so all members count the same span. */
    if (rc == 0 && set->enabled &&
        ioctl(fds[0], PERF_EVENT_IOC_ENABLE, PERF_IOC_FLAG_GROUP) < 0) {
        rc = -errno;
        i = 0;
    }
    if (rc < 0) {
        close_fds(fds, set->nevents);
        free(fds);
        free(last);
        set_error(err, (int)i, target, rc);
        return rc;
    }

    set->groups[slot].fds = fds;
    set->groups[slot].last = last;
    set->groups[slot].bucket = bucket;
    set->nlive++;
    return slot;
}

/* Make sure retired_b has a row for bucket. */
static int grow_retired_rows(struct kvmstat_set *set, unsigned int bucket)
{
    if (bucket < set->retired_rows)
        return 0;
    unsigned int rows = bucket + 1;
    size_t n = (size_t)rows * set->nevents;
    uint64_t *b = realloc(set->retired_b, n * sizeof(*b));
    if (!b)
        return -ENOMEM;
    memset(b + (size_t)set->retired_rows * set->nevents, 0,
           (n - (size_t)set->retired_rows * set->nevents) * sizeof(*b));
    set->retired_b = b;
    set->retired_rows = rows;
    return 0;
}

static struct group *live_group(struct kvmstat_set *set, int slot)
{
    if (!set || slot < 0 || (unsigned int)slot >= set->nslots ||
        !set->groups[slot].fds)
        return NULL;
    return &set->groups[slot];
}

int kvmstat_set_retire(struct kvmstat_set *set, int slot)
{
    struct group *g = live_group(set, slot);
    if (!g)
        return -EINVAL;

    /* Grow first: failing here leaves the group live and nothing lost. */
    int rc = grow_retired_rows(set, g->bucket);
    if (rc < 0)
        return rc;
    rc = read_group(set, g);
    if (rc < 0)
        return rc;
    add_values(set->retired, g->last, set->nevents);
    add_values(set->retired_b + (size_t)g->bucket * set->nevents,
               g->last, set->nevents);

    close_fds(g->fds, set->nevents);
    free_group(g);
    set->nlive--;
    return 0;
}

/* Apply a group ioctl to every live leader; stops at the first failure. */
static int ioctl_all(struct kvmstat_set *set, unsigned long request)
{
    if (!set)
        return -EINVAL;
    for (unsigned int s = 0; s < set->nslots; s++) {
        if (set->groups[s].fds &&
            ioctl(set->groups[s].fds[0], request, PERF_IOC_FLAG_GROUP) < 0)
            return -errno;
    }
    return 0;
}

int kvmstat_set_enable(struct kvmstat_set *set)
{
    int rc = ioctl_all(set, PERF_EVENT_IOC_ENABLE);
    if (rc == 0)
        set->enabled = 1;
    return rc;
}

int kvmstat_set_disable(struct kvmstat_set *set)
{
    int rc = ioctl_all(set, PERF_EVENT_IOC_DISABLE);
    if (rc == 0)
        set->enabled = 0;
    return rc;
}

/*
 * Reset does not use PERF_EVENT_IOC_RESET: that ioctl leaves what inherited
 * events of ended threads gave back to their parent event in the count.
 * Instead the retired sums become minus the current value of every live
 * group (modulo 2^64), so every later read starts from zero.  New sums are
 * built aside and swapped in: a failure leaves the set as it was.
 */
int kvmstat_set_reset(struct kvmstat_set *set)
{
    if (!set)
        return -EINVAL;
    unsigned int ne = set->nevents, rows = set->retired_rows;

    for (unsigned int s = 0; s < set->nslots; s++)
        if (set->groups[s].fds && set->groups[s].bucket >= rows)
            rows = set->groups[s].bucket + 1;
    uint64_t *retired = calloc(ne, sizeof(*retired));
    uint64_t *retired_b = rows ? calloc((size_t)rows * ne, sizeof(*retired_b)) : NULL;
    if (!retired || (rows && !retired_b)) {
        free(retired);
        free(retired_b);
        return -ENOMEM;
    }
    for (unsigned int s = 0; s < set->nslots; s++) {
        struct group *g = &set->groups[s];
        if (!g->fds)
            continue;
        int rc = read_group(set, g);
        if (rc < 0) {
            free(retired);
            free(retired_b);
            return rc;
        }
        uint64_t *row = retired_b + (size_t)g->bucket * ne;
        for (unsigned int i = 0; i < ne; i++) {
            retired[i] -= g->last[i];
            row[i] -= g->last[i];
        }
    }
    free(set->retired);
    free(set->retired_b);
    set->retired = retired;
    set->retired_b = retired_b;
    set->retired_rows = rows;
    return 0;
}

int kvmstat_set_clear_bucket(struct kvmstat_set *set, unsigned int bucket)
{
    if (!set)
        return -EINVAL;
    for (unsigned int s = 0; s < set->nslots; s++)
        if (set->groups[s].fds && set->groups[s].bucket == bucket)
            return -EBUSY;
    if (bucket < set->retired_rows)
        memset(set->retired_b + (size_t)bucket * set->nevents, 0,
               set->nevents * sizeof(*set->retired_b));
    return 0;
}

int kvmstat_set_groups(const struct kvmstat_set *set)
{
    return set ? (int)set->nlive : -EINVAL;
}

int kvmstat_set_fds(const struct kvmstat_set *set)
{
    return set ? (int)(set->nlive * set->nevents) : -EINVAL;
}

int kvmstat_set_read(struct kvmstat_set *set, uint64_t *totals,
                     uint64_t *buckets, unsigned int nbuckets)
{
    if (!set || !totals)
        return -EINVAL;
    unsigned int ne = set->nevents;

    memcpy(totals, set->retired, ne * sizeof(*totals));
    if (buckets) {
        size_t n = (size_t)nbuckets * ne;
        size_t have = (size_t)(set->retired_rows < nbuckets ?
                               set->retired_rows : nbuckets) * ne;
        if (have)
            memcpy(buckets, set->retired_b, have * sizeof(*buckets));
        memset(buckets + have, 0, (n - have) * sizeof(*buckets));
    }

    int nread = 0;
    for (unsigned int s = 0; s < set->nslots; s++) {
        struct group *g = &set->groups[s];
        if (!g->fds)
            continue;
        int rc = read_group(set, g);
        if (rc < 0)
            return rc;
        const uint64_t *v = g->last;
        add_values(totals, v, ne);
        if (buckets && g->bucket < nbuckets)
            add_values(buckets + (size_t)g->bucket * ne, v, ne);
        nread++;
    }
    return nread;
}

void kvmstat_set_free(struct kvmstat_set *set)
{
    if (!set)
        return;
    for (unsigned int s = 0; s < set->nslots; s++) {
        if (set->groups[s].fds) {
            close_fds(set->groups[s].fds, set->nevents);
            free_group(&set->groups[s]);
        }
    }
    if (set->filters)
        for (unsigned int i = 0; i < set->nevents; i++)
            free(set->filters[i]);
    free(set->groups);
    free(set->filters);
    free(set->tp_ids);
    free(set->retired);
    free(set->retired_b);
    free(set->readbuf);
    free(set);
}
