/*
 * kvmstat BPF counting engine: see kvmstat_bpf.h for the contract.
 *
 * Layout: an engine owns two maps (the per-CPU count table and a one-slot
 * per-CPU "dropped" counter), one program and one perf event per
 * tracepoint, the field definitions in a form that makes folding an entry
 * a binary search, the tgid -> bucket table (sorted), the read buffers, and
 * the sums of forgotten processes ("retired", keyed by event and reason).
 */
#define _GNU_SOURCE
#include "kvmstat_bpf.h"

#include <errno.h>
#include <linux/bpf.h>
#include <linux/perf_event.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

/* The count table's key, as the programs write it on their stack. */
struct count_key {
    uint32_t event;
    uint32_t tgid;
    uint64_t reason;
};
_Static_assert(sizeof(struct count_key) == 16, "count_key must have no padding");
_Static_assert(sizeof(struct kvmstat_bpf_entry) == 24, "entry layout");

/* Stack slots of the programs (offsets from the frame pointer r10). */
#define FP_KEY     (-16)  /* struct count_key */
#define FP_KEY_AT(member) ((int16_t)(FP_KEY + (int)offsetof(struct count_key, member)))
#define FP_ONE     (-24)  /* u64 1: the value of a new entry */
#define FP_ZERO    (-32)  /* u32 0: the key of the dropped counter */
#define FP_TGID    (-40)  /* u32 tgid: the key of the "also" map */

/* Ample for the ~35 instructions the assembler emits. */
#define MAX_INSNS 64

/* The kernel copies one 8-byte slot per possible CPU; no kernel supports
 * more than this many CPUs (NR_CPUS is at most 8192). */
#define MAX_POSSIBLE_CPUS 16384

/* First and largest number of entries fetched per BPF_MAP_LOOKUP_BATCH. */
#define BATCH_FIRST 256
#define BATCH_MAX   4096

#ifndef ENOTSUPP
#define ENOTSUPP 524  /* kernel-internal "not supported", seen by user space */
#endif

/* A child field's reason code, in a per-event segment sorted by code. */
struct child_code {
    uint64_t code;
    uint32_t field;
};

struct tgid_bucket {
    uint32_t tgid;
    uint32_t bucket;
};

struct kvmstat_bpf {
    unsigned int nevents;
    int counts_fd;           /* BPF_MAP_TYPE_PERCPU_HASH count_key -> u64 */
    int drops_fd;            /* BPF_MAP_TYPE_PERCPU_ARRAY [1] u64 */
    int also_fd;             /* with only_tgid: BPF_MAP_TYPE_HASH u32 tgid -> u32 */
    uint32_t *also;          /* its keys, sorted */
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

/* ------------------------------------------------------------------------
 * System calls
 */

static uint64_t ptr_u64(const void *p)
{
    return (uint64_t)(uintptr_t)p;
}

static int sys_bpf(int cmd, union bpf_attr *attr)
{
    long rc = syscall(__NR_bpf, cmd, attr, sizeof(*attr));
    return rc < 0 ? -errno : (int)rc;
}

static int map_create(uint32_t type, uint32_t key_size, uint32_t value_size,
                      uint32_t max_entries, uint32_t flags, const char *name)
{
    union bpf_attr a;

    memset(&a, 0, sizeof(a));
    a.map_type = type;
    a.key_size = key_size;
    a.value_size = value_size;
    a.max_entries = max_entries;
    a.map_flags = flags;
    /* Names only help bpftool users; shorter than BPF_OBJ_NAME_LEN. */
    strncpy(a.map_name, name, sizeof(a.map_name) - 1);
    return sys_bpf(BPF_MAP_CREATE, &a);
}

static int map_lookup(int fd, const void *key, void *value)
{
    union bpf_attr a;

    memset(&a, 0, sizeof(a));
    a.map_fd = (uint32_t)fd;
    a.key = ptr_u64(key);
    a.value = ptr_u64(value);
    return sys_bpf(BPF_MAP_LOOKUP_ELEM, &a);
}

static int map_update(int fd, const void *key, const void *value)
{
    union bpf_attr a;

    memset(&a, 0, sizeof(a));
    a.map_fd = (uint32_t)fd;
    a.key = ptr_u64(key);
    a.value = ptr_u64(value);
    a.flags = BPF_ANY;
    return sys_bpf(BPF_MAP_UPDATE_ELEM, &a);
}

static int map_delete(int fd, const void *key)
{
    union bpf_attr a;

    memset(&a, 0, sizeof(a));
    a.map_fd = (uint32_t)fd;
    a.key = ptr_u64(key);
    return sys_bpf(BPF_MAP_DELETE_ELEM, &a);
}

static void close_fd(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

/* ------------------------------------------------------------------------
 * A tiny assembler for the counting program
 */

struct program {
    struct bpf_insn insn[MAX_INSNS];
    unsigned int n;
};

static void put(struct program *p, uint8_t code, uint8_t dst, uint8_t src,
                int16_t off, int32_t imm)
{
    if (p->n >= MAX_INSNS)  /* cannot happen: the program has a fixed shape */
        abort();
    struct bpf_insn *i = &p->insn[p->n++];
    memset(i, 0, sizeof(*i));
    i->code = code;
    i->dst_reg = dst & 0xf;
    i->src_reg = src & 0xf;
    i->off = off;
    i->imm = imm;
}

enum { R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 };

static void mov_reg(struct program *p, int dst, int src)
{
    put(p, BPF_ALU64 | BPF_MOV | BPF_X, dst, src, 0, 0);
}

static void mov_imm(struct program *p, int dst, int32_t imm)
{
    put(p, BPF_ALU64 | BPF_MOV | BPF_K, dst, 0, 0, imm);
}

static void alu_imm(struct program *p, int op, int dst, int32_t imm)
{
    put(p, BPF_ALU64 | op | BPF_K, dst, 0, 0, imm);
}

/* dst = *(size *)(src + off), zero-extended */
static void load(struct program *p, int size, int dst, int src, int16_t off)
{
    put(p, BPF_LDX | BPF_MEM | size, dst, src, off, 0);
}

/* *(size *)(dst + off) = src */
static void store_reg(struct program *p, int size, int dst, int16_t off, int src)
{
    put(p, BPF_STX | BPF_MEM | size, dst, src, off, 0);
}

/* *(size *)(dst + off) = imm */
static void store_imm(struct program *p, int size, int dst, int16_t off, int32_t imm)
{
    put(p, BPF_ST | BPF_MEM | size, dst, 0, off, imm);
}

/* dst = the map of this descriptor (a 16-byte instruction). */
static void load_map(struct program *p, int dst, int map_fd)
{
    put(p, BPF_LD | BPF_DW | BPF_IMM, dst, BPF_PSEUDO_MAP_FD, 0, map_fd);
    put(p, 0, 0, 0, 0, 0);
}

static void call(struct program *p, int helper)
{
    put(p, BPF_JMP | BPF_CALL, 0, 0, 0, helper);
}

/* A conditional jump whose target is set later with land(); returns it. */
static unsigned int jump_if(struct program *p, int op, int dst, int32_t imm)
{
    put(p, BPF_JMP | op | BPF_K, dst, 0, 0, imm);
    return p->n - 1;
}

static unsigned int jump(struct program *p)
{
    put(p, BPF_JMP | BPF_JA, 0, 0, 0, 0);
    return p->n - 1;
}

/* Make the jump at index `from` go to the next instruction emitted. */
static void land(struct program *p, unsigned int from)
{
    p->insn[from].off = (int16_t)(p->n - from - 1);
}

/* *(u64 *)r0 += 1 (r0 points at this CPU's slot: no atomics needed, and a
 * tracing program never interrupts another on the same CPU). */
static void increment_at_r0(struct program *p)
{
    load(p, BPF_DW, R1, R0, 0);
    alu_imm(p, BPF_ADD, R1, 1);
    store_reg(p, BPF_DW, R0, 0, R1);
}

static int size_code(uint32_t bytes)
{
    switch (bytes) {
    case 1: return BPF_B;
    case 2: return BPF_H;
    case 4: return BPF_W;
    case 8: return BPF_DW;
    default: return -1;
    }
}

/*
 * The program of one tracepoint (r1 = the tracepoint record):
 *
 *   key = { event, current tgid, reason field or 0 }
 *   if only_tgid given, tgid differs and is not in the "also" map: return 1
 *   if (slot = lookup(counts, key)) *slot += 1
 *   else if update(counts, key, 1) fails: dropped[0] += 1
 *   return 1
 *
 * The programs of a tracepoint are shared by every perf event on it:
 * returning 0 would hide the hit from every other perf user of the
 * tracepoint (perf stat, a kvm_stat counting with perf groups), so the
 * program returns 1 and perf goes on feeding the events that want it.
 */
static void assemble(struct program *p, uint32_t event_index,
                     const struct kvmstat_bpf_event *ev, int64_t only_tgid,
                     int counts_fd, int drops_fd, int also_fd)
{
    unsigned int to_out[5], nout = 0;

    p->n = 0;
    mov_reg(p, R6, R1);                        /* keep the record */
    call(p, BPF_FUNC_get_current_pid_tgid);    /* r0 = tgid << 32 | tid */
    alu_imm(p, BPF_RSH, R0, 32);
    mov_reg(p, R7, R0);                        /* r7 = tgid (kept by calls) */
    if (only_tgid >= 0) {
        /* The watched process itself costs one comparison; the others
         * one lookup in the small map of processes counted too. */
        unsigned int to_count = jump_if(p, BPF_JEQ, R7, (int32_t)only_tgid);
        store_reg(p, BPF_W, R10, FP_TGID, R7);
        load_map(p, R1, also_fd);
        mov_reg(p, R2, R10);
        alu_imm(p, BPF_ADD, R2, FP_TGID);
        call(p, BPF_FUNC_map_lookup_elem);
        to_out[nout++] = jump_if(p, BPF_JEQ, R0, 0);
        land(p, to_count);
    }
    store_imm(p, BPF_W, R10, FP_KEY_AT(event),
              (int32_t)event_index);
    store_reg(p, BPF_W, R10, FP_KEY_AT(tgid), R7);
    if (ev->reason_offset >= 0) {
        load(p, size_code(ev->reason_size), R1, R6, (int16_t)ev->reason_offset);
        store_reg(p, BPF_DW, R10, FP_KEY_AT(reason), R1);
    } else {
        store_imm(p, BPF_DW, R10, FP_KEY_AT(reason), 0);
    }

    load_map(p, R1, counts_fd);
    mov_reg(p, R2, R10);
    alu_imm(p, BPF_ADD, R2, FP_KEY);
    call(p, BPF_FUNC_map_lookup_elem);
    unsigned int to_insert = jump_if(p, BPF_JEQ, R0, 0);
    increment_at_r0(p);
    to_out[nout++] = jump(p);

    land(p, to_insert);
    /* BPF_ANY: if another CPU created the entry meanwhile, this only sets
     * this CPU's slot, which was 0. */
    store_imm(p, BPF_DW, R10, FP_ONE, 1);
    load_map(p, R1, counts_fd);
    mov_reg(p, R2, R10);
    alu_imm(p, BPF_ADD, R2, FP_KEY);
    mov_reg(p, R3, R10);
    alu_imm(p, BPF_ADD, R3, FP_ONE);
    mov_imm(p, R4, BPF_ANY);
    call(p, BPF_FUNC_map_update_elem);
    to_out[nout++] = jump_if(p, BPF_JEQ, R0, 0);

    /* The table is full (or out of memory): count the lost hit. */
    store_imm(p, BPF_W, R10, FP_ZERO, 0);
    load_map(p, R1, drops_fd);
    mov_reg(p, R2, R10);
    alu_imm(p, BPF_ADD, R2, FP_ZERO);
    call(p, BPF_FUNC_map_lookup_elem);
    to_out[nout++] = jump_if(p, BPF_JEQ, R0, 0);
    increment_at_r0(p);

    for (unsigned int i = 0; i < nout; i++)
        land(p, to_out[i]);
    mov_imm(p, R0, 1);  /* see above: let other perf users see the hit */
    put(p, BPF_JMP | BPF_EXIT, 0, 0, 0, 0);
}

/*
 * Load a tracepoint program.  The first attempt has no log (the verifier
 * works faster without); only when it fails is the program loaded again
 * with the log, so the caller can show why.  Returns the fd or the first
 * attempt's -errno.
 */
static int prog_load(const struct program *p, const char *name,
                     char *log, unsigned int log_size)
{
    static const char license[] = "GPL";  /* kvmstat is GPL-2.0-only */
    union bpf_attr a;

    memset(&a, 0, sizeof(a));
    a.prog_type = BPF_PROG_TYPE_TRACEPOINT;
    a.insn_cnt = p->n;
    a.insns = ptr_u64(p->insn);
    a.license = ptr_u64(license);
    strncpy(a.prog_name, name, sizeof(a.prog_name) - 1);
    int fd = sys_bpf(BPF_PROG_LOAD, &a);
    if (fd >= 0 || !log || log_size < 2)
        return fd;

    log[0] = '\0';
    a.log_level = 1;
    a.log_buf = ptr_u64(log);
    a.log_size = log_size;
    int again = sys_bpf(BPF_PROG_LOAD, &a);
    log[log_size - 1] = '\0';
    return again >= 0 ? again : fd;
}

static int perf_open_tracepoint(uint64_t tracepoint_id)
{
    struct perf_event_attr attr;

    memset(&attr, 0, sizeof(attr));
    attr.type = PERF_TYPE_TRACEPOINT;
    attr.size = sizeof(attr);
    attr.config = tracepoint_id;
    attr.disabled = 1;
    /* pid -1, cpu 0: one event; its program runs on every CPU's hits. */
    long fd = syscall(SYS_perf_event_open, &attr, -1, 0, -1, PERF_FLAG_FD_CLOEXEC);
    return fd < 0 ? -errno : (int)fd;
}

/* ------------------------------------------------------------------------
 * Creation
 */

static void set_error(struct kvmstat_bpf_error *err, int stage, int index, int rc)
{
    if (err) {
        err->stage = stage;
        err->event_index = index;
        err->err = -rc;
    }
}

/*
 * The number of possible CPUs, as the kernel sees it: a lookup in a per-CPU
 * map copies one 8-byte slot per possible CPU, so look up the (zeroed) slot
 * of the fresh dropped counter into a buffer of all-ones and count the
 * slots that came back zero.  This cannot disagree with the kernel, unlike
 * parsing /sys/devices/system/cpu/possible.
 */
static int count_possible_cpus(int drops_fd)
{
    uint64_t *buf = malloc(MAX_POSSIBLE_CPUS * sizeof(*buf));
    uint32_t key = 0;
    unsigned int n = 0;

    if (!buf)
        return -ENOMEM;
    memset(buf, 0xff, MAX_POSSIBLE_CPUS * sizeof(*buf));
    int rc = map_lookup(drops_fd, &key, buf);
    if (rc == 0) {
        while (n < MAX_POSSIBLE_CPUS && buf[n] == 0)
            n++;
        rc = (n == 0 || n == MAX_POSSIBLE_CPUS) ? -EIO : (int)n;
    }
    free(buf);
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

static int check_event(const struct kvmstat_bpf_event *ev)
{
    if (ev->reason_offset < 0)
        return 0;
    /* The loads address the record with a 16-bit offset; the verifier
     * itself rejects what lies beyond the record (with a log). */
    if (ev->reason_offset > INT16_MAX || size_code(ev->reason_size) < 0)
        return -EINVAL;
    return 0;
}

/* prog_load keeps the first BPF_OBJ_NAME_LEN - 1 characters. */
static void name_program(char *buf, size_t size, unsigned int index)
{
    snprintf(buf, size, "kvmstat_%u", index);
}

int kvmstat_bpf_new(const struct kvmstat_bpf_event *events, unsigned int nevents,
                    int64_t only_tgid, unsigned int max_entries,
                    char *log, unsigned int log_size,
                    struct kvmstat_bpf_error *err, struct kvmstat_bpf **out)
{
    struct kvmstat_bpf *eng;
    int rc;

    if (log && log_size)
        log[0] = '\0';
    if (!out || !events || nevents == 0 ||
        only_tgid < KVMSTAT_BPF_ALL_TGIDS || only_tgid > INT32_MAX) {
        set_error(err, 0, -1, -EINVAL);
        return -EINVAL;
    }
    *out = NULL;
    for (unsigned int i = 0; i < nevents; i++) {
        if (check_event(&events[i]) < 0) {
            set_error(err, KVMSTAT_BPF_STAGE_LOAD, (int)i, -EINVAL);
            return -EINVAL;
        }
    }

    eng = calloc(1, sizeof(*eng));
    if (!eng) {
        set_error(err, 0, -1, -ENOMEM);
        return -ENOMEM;
    }
    eng->nevents = nevents;
    eng->counts_fd = eng->drops_fd = eng->also_fd = -1;
    eng->prog_fds = malloc(nevents * sizeof(int));
    eng->perf_fds = malloc(nevents * sizeof(int));
    eng->pstart = calloc(nevents + 1, sizeof(unsigned int));
    eng->cstart = calloc(nevents + 1, sizeof(unsigned int));
    if (!eng->prog_fds || !eng->perf_fds || !eng->pstart || !eng->cstart) {
        rc = -ENOMEM;
        set_error(err, 0, -1, rc);
        goto fail;
    }
    for (unsigned int i = 0; i < nevents; i++)
        eng->prog_fds[i] = eng->perf_fds[i] = -1;

    rc = map_create(BPF_MAP_TYPE_PERCPU_ARRAY, sizeof(uint32_t),
                    sizeof(uint64_t), 1, 0, "kvmstat_drops");
    if (rc < 0) {
        set_error(err, KVMSTAT_BPF_STAGE_MAP, -1, rc);
        goto fail;
    }
    eng->drops_fd = rc;
    rc = count_possible_cpus(eng->drops_fd);
    if (rc < 0) {
        set_error(err, KVMSTAT_BPF_STAGE_CPUS, -1, rc);
        goto fail;
    }
    eng->ncpus = (unsigned int)rc;

    /* Preallocated: a program that must allocate an entry on first use can
     * fail (the kernel's per-CPU element cache is refilled asynchronously,
     * so a burst of new entries finds it empty) and would lose that hit. */
    eng->max_entries = max_entries ? max_entries : default_table_size(eng->ncpus);
    rc = map_create(BPF_MAP_TYPE_PERCPU_HASH, sizeof(struct count_key),
                    sizeof(uint64_t), eng->max_entries, 0, "kvmstat_counts");
    if (rc < 0) {
        set_error(err, KVMSTAT_BPF_STAGE_MAP, -1, rc);
        goto fail;
    }
    eng->counts_fd = rc;
    if (only_tgid >= 0) {
        /* Written only from user space: never allocates in a program. */
        rc = map_create(BPF_MAP_TYPE_HASH, sizeof(uint32_t), sizeof(uint32_t),
                        KVMSTAT_BPF_MAX_ALSO, BPF_F_NO_PREALLOC, "kvmstat_also");
        if (rc < 0) {
            set_error(err, KVMSTAT_BPF_STAGE_MAP, -1, rc);
            goto fail;
        }
        eng->also_fd = rc;
    }

    eng->batch_cap = BATCH_FIRST;
    eng->keys = malloc(eng->batch_cap * sizeof(*eng->keys));
    eng->values = malloc((size_t)eng->batch_cap * eng->ncpus * sizeof(uint64_t));
    if (!eng->keys || !eng->values) {
        rc = -ENOMEM;
        set_error(err, 0, -1, rc);
        goto fail;
    }

    /* The perf events stay disabled: a program attached to a tracepoint
     * runs from the tracepoint's perf probe, which is registered when the
     * event is opened, whatever the event's state.  A disabled event is
     * not on any CPU's list of perf events to feed, so perf does no work
     * for it after the program returns. */
    for (unsigned int i = 0; i < nevents; i++) {
        struct program prog;
        char name[32];

        assemble(&prog, i, &events[i], only_tgid, eng->counts_fd, eng->drops_fd,
                 eng->also_fd);
        name_program(name, sizeof(name), i);
        rc = prog_load(&prog, name, log, log_size);
        if (rc < 0) {
            set_error(err, KVMSTAT_BPF_STAGE_LOAD, (int)i, rc);
            goto fail;
        }
        eng->prog_fds[i] = rc;

        rc = perf_open_tracepoint(events[i].tracepoint_id);
        if (rc < 0) {
            set_error(err, KVMSTAT_BPF_STAGE_OPEN, (int)i, rc);
            goto fail;
        }
        eng->perf_fds[i] = rc;
        if (ioctl(eng->perf_fds[i], PERF_EVENT_IOC_SET_BPF, eng->prog_fds[i]) < 0) {
            rc = -errno;
            set_error(err, KVMSTAT_BPF_STAGE_ATTACH, (int)i, rc);
            goto fail;
        }
    }
    *out = eng;
    return 0;

fail:
    kvmstat_bpf_free(eng);
    return rc;
}

int kvmstat_bpf_probe(uint64_t tracepoint_id, struct kvmstat_bpf_error *err)
{
    static const struct kvmstat_bpf_event no_reason = { 0, -1, 0 };
    struct program prog;
    int counts = -1, drops = -1, pfd = -1, efd = -1, rc;

    rc = counts = map_create(BPF_MAP_TYPE_PERCPU_HASH, sizeof(struct count_key),
                             sizeof(uint64_t), 1, BPF_F_NO_PREALLOC,
                             "kvmstat_probe");
    if (rc >= 0)
        rc = drops = map_create(BPF_MAP_TYPE_PERCPU_ARRAY, sizeof(uint32_t),
                                sizeof(uint64_t), 1, 0, "kvmstat_probe");
    if (rc < 0) {
        set_error(err, KVMSTAT_BPF_STAGE_MAP, -1, rc);
        goto out;
    }
    assemble(&prog, 0, &no_reason, KVMSTAT_BPF_ALL_TGIDS, counts, drops, -1);
    rc = pfd = prog_load(&prog, "kvmstat_probe", NULL, 0);
    if (rc < 0) {
        set_error(err, KVMSTAT_BPF_STAGE_LOAD, -1, rc);
        goto out;
    }
    if (tracepoint_id) {
        rc = efd = perf_open_tracepoint(tracepoint_id);
        if (rc < 0) {
            set_error(err, KVMSTAT_BPF_STAGE_OPEN, 0, rc);
            goto out;
        }
        rc = ioctl(efd, PERF_EVENT_IOC_SET_BPF, pfd) < 0 ? -errno : 0;
        if (rc < 0) {
            set_error(err, KVMSTAT_BPF_STAGE_ATTACH, 0, rc);
            goto out;
        }
    }
    rc = 0;
out:
    close_fd(&efd);
    close_fd(&pfd);
    close_fd(&drops);
    close_fd(&counts);
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

    for (unsigned int f = 0; f < nfields; f++) {
        if (fields[f].event >= ne || (fields[f].ncodes && !fields[f].codes))
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

static int cmp_u32(const void *a, const void *b)
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
    return bsearch(&x, v, n, sizeof(*v), cmp_u32) != NULL;
}

int kvmstat_bpf_also_count(struct kvmstat_bpf *eng, const uint32_t *tgids,
                           unsigned int n)
{
    if (!eng || (n && !tgids))
        return -EINVAL;
    if (eng->also_fd < 0 || n > KVMSTAT_BPF_MAX_ALSO)
        return -EINVAL;
    uint32_t *want = malloc((n ? n : 1) * sizeof(*want));
    if (!want)
        return -ENOMEM;
    if (n)
        memcpy(want, tgids, n * sizeof(*want));
    qsort(want, n, sizeof(*want), cmp_u32);
    unsigned int m = 0;
    for (unsigned int i = 0; i < n; i++)  /* drop duplicates */
        if (m == 0 || want[m - 1] != want[i])
            want[m++] = want[i];

    /* Add first, then remove: a process in both sets is never missing. */
    uint32_t one = 1;
    for (unsigned int i = 0; i < m; i++) {
        if (sorted_contains(eng->also, eng->nalso, want[i]))
            continue;
        int rc = map_update(eng->also_fd, &want[i], &one);
        if (rc < 0) {
            free(want);
            return rc;
        }
    }
    for (unsigned int i = 0; i < eng->nalso; i++) {
        if (sorted_contains(want, m, eng->also[i]))
            continue;
        int rc = map_delete(eng->also_fd, &eng->also[i]);
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

/* The bucket of a process, or -1 if it has none. */
static long bucket_of(const struct kvmstat_bpf *eng, uint32_t tgid)
{
    struct tgid_bucket want = { tgid, 0 };
    const struct tgid_bucket *t = bsearch(&want, eng->buckets, eng->nbuckets_map,
                                          sizeof(want), cmp_tgid_bucket);
    return t ? (long)t->bucket : -1;
}

/* ------------------------------------------------------------------------
 * Fetching the map
 */

static int reserve_entries(struct kvmstat_bpf *eng, unsigned int more)
{
    if (eng->nentries + (size_t)more <= eng->entries_cap)
        return 0;
    size_t cap = eng->entries_cap ? eng->entries_cap : 64;
    while (cap < eng->nentries + (size_t)more)
        cap *= 2;
    if (cap > UINT32_MAX)
        return -ENOMEM;
    struct kvmstat_bpf_entry *e = realloc(eng->entries, cap * sizeof(*e));
    if (!e)
        return -ENOMEM;
    eng->entries = e;
    eng->entries_cap = (unsigned int)cap;
    return 0;
}

static int grow_batch(struct kvmstat_bpf *eng, unsigned int cap)
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
    int rc = reserve_entries(eng, n);
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
        union bpf_attr a;

        memset(&a, 0, sizeof(a));
        a.batch.in_batch = first ? 0 : ptr_u64(in_token);
        a.batch.out_batch = ptr_u64(out_token);
        a.batch.keys = ptr_u64(eng->keys);
        a.batch.values = ptr_u64(eng->values);
        a.batch.count = eng->batch_cap;
        a.batch.map_fd = (uint32_t)eng->counts_fd;
        int rc = sys_bpf(BPF_MAP_LOOKUP_BATCH, &a);
        calls++;
        if (rc < 0 && rc != -ENOENT) {
            if (rc == -ENOSPC && a.batch.count == 0 && eng->batch_cap < UINT32_MAX / 2) {
                rc = grow_batch(eng, eng->batch_cap * 2);
                if (rc < 0)
                    return rc;
                continue;  /* same token, bigger buffer */
            }
            return rc;
        }
        int arc = append_fetched(eng, a.batch.count);
        if (arc < 0)
            return arc;
        if (rc == -ENOENT)
            break;
        memcpy(in_token, out_token, sizeof(in_token));
        first = 0;
    }
    /* A big table: fetch more per call next time. */
    if (calls > 2 && eng->batch_cap < BATCH_MAX)
        return grow_batch(eng, eng->batch_cap * 2 > BATCH_MAX ? BATCH_MAX
                                                              : eng->batch_cap * 2);
    return 0;
}

/* GET_NEXT_KEY + LOOKUP_ELEM, for kernels without batch lookups.  Entries
 * are only deleted by this engine, so the walk never restarts. */
static int fetch_iteration(struct kvmstat_bpf *eng)
{
    struct count_key key, next;
    int have_key = 0;

    for (;;) {
        union bpf_attr a;

        memset(&a, 0, sizeof(a));
        a.map_fd = (uint32_t)eng->counts_fd;
        a.key = have_key ? ptr_u64(&key) : 0;
        a.next_key = ptr_u64(&next);
        int rc = sys_bpf(BPF_MAP_GET_NEXT_KEY, &a);
        if (rc == -ENOENT)
            return 0;
        if (rc < 0)
            return rc;
        key = next;
        have_key = 1;
        rc = map_lookup(eng->counts_fd, &next, eng->values);
        if (rc == -ENOENT)
            continue;
        if (rc < 0)
            return rc;
        eng->keys[0] = next;
        rc = append_fetched(eng, 1);
        if (rc < 0)
            return rc;
    }
}

/* Fill eng->entries with every map entry, summed over CPUs. */
static int fetch(struct kvmstat_bpf *eng)
{
    eng->nentries = 0;
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

static int read_dropped(struct kvmstat_bpf *eng, uint64_t *dropped)
{
    uint32_t key = 0;
    /* The batch buffer always has room for one per-CPU value. */
    int rc = map_lookup(eng->drops_fd, &key, eng->values);
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
    int rc = fetch(eng);
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
        long b = nbuckets ? bucket_of(eng, e->tgid) : -1;
        fold(eng, e, b < (long)nbuckets ? b : -1, totals, buckets);
    }
    return (int)eng->nentries;
}

int kvmstat_bpf_dump(struct kvmstat_bpf *eng, struct kvmstat_bpf_entry *out,
                     unsigned int cap)
{
    if (!eng || (cap && !out))
        return -EINVAL;
    int rc = fetch(eng);
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
    int rc = fetch(eng);
    if (rc < 0)
        return rc;
    for (unsigned int i = 0; i < eng->nentries; i++) {
        const struct kvmstat_bpf_entry *e = &eng->entries[i];
        struct count_key key = { e->event, e->tgid, e->reason };
        rc = map_delete(eng->counts_fd, &key);
        if (rc < 0 && rc != -ENOENT)
            return rc;
    }
    /* Zero every CPU's slot of the dropped counter. */
    uint32_t zero_key = 0;
    memset(eng->values, 0, eng->ncpus * sizeof(uint64_t));
    rc = map_update(eng->drops_fd, &zero_key, eng->values);
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
    if (n == 0)
        return 0;
    uint32_t *gone = malloc(n * sizeof(*gone));
    if (!gone)
        return -ENOMEM;
    memcpy(gone, tgids, n * sizeof(*gone));
    qsort(gone, n, sizeof(*gone), cmp_u32);

    int rc = fetch(eng), removed = 0;
    for (unsigned int i = 0; rc >= 0 && i < eng->nentries; i++) {
        const struct kvmstat_bpf_entry *e = &eng->entries[i];
        if (!bsearch(&e->tgid, gone, n, sizeof(*gone), cmp_u32))
            continue;
        /* Make room first, so a deleted entry's count is never lost. */
        rc = retire_count(eng, &(struct kvmstat_bpf_entry){ e->event, 0, e->reason, 0 });
        if (rc < 0)
            break;
        struct count_key key = { e->event, e->tgid, e->reason };
        rc = map_delete(eng->counts_fd, &key);
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

/* ------------------------------------------------------------------------
 * Introspection and teardown
 */

int kvmstat_bpf_missed(struct kvmstat_bpf *eng, uint64_t *missed)
{
    if (!eng || !missed)
        return -EINVAL;
    uint64_t sum = 0;
    for (unsigned int i = 0; i < eng->nevents; i++) {
        struct bpf_prog_info info;
        union bpf_attr a;

        memset(&info, 0, sizeof(info));
        memset(&a, 0, sizeof(a));
        a.info.bpf_fd = (uint32_t)eng->prog_fds[i];
        a.info.info_len = sizeof(info);
        a.info.info = ptr_u64(&info);
        int rc = sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &a);
        if (rc < 0)
            return rc;
        /* Kernels before 5.12 have no such field and return a shorter
         * info_len; the zeroed field then reads as 0. */
        if (a.info.info_len >= offsetof(struct bpf_prog_info, recursion_misses) + sizeof(uint64_t))
            sum += info.recursion_misses;
    }
    *missed = sum;
    return 0;
}

int kvmstat_bpf_fds(const struct kvmstat_bpf *eng)
{
    return eng ? (int)(2 * eng->nevents + 2 + (eng->also_fd >= 0)) : -EINVAL;
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
        if (eng->perf_fds)
            close_fd(&eng->perf_fds[i]);
        if (eng->prog_fds)
            close_fd(&eng->prog_fds[i]);
    }
    close_fd(&eng->also_fd);
    close_fd(&eng->drops_fd);
    close_fd(&eng->counts_fd);
    free(eng->prog_fds);
    free(eng->perf_fds);
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
