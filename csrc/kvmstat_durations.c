/*
 * kvmstat durations engine: see kvmstat_durations.h for the contract.
 *
 * Maps:
 *   threads  LRU hash, tid -> struct thread_state (when each state began)
 *   hist     per-CPU hash, struct hist_key -> struct hist_value
 *   gen      array [1] u64: the current generation of max_ns
 *   drops    per-CPU array [1] u64: durations lost to a full hist table
 *
 * One program per tracepoint used, built with the assembler of
 * kvmstat_bpf_asm.h: a raw tracepoint program (its fields are arguments of
 * the tracepoint) where the configuration says where the fields are and
 * the kernel accepts it, else a perf tracepoint program (the context is the
 * record, fields at the offsets of the tracepoint's format file).
 */
#define _GNU_SOURCE
#include "kvmstat_array.h"
#include "kvmstat_durations.h"

#include <errno.h>
#include <linux/bpf.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kvmstat_bpf_asm.h"
#include "kvmstat_sys.h"

#define NTRACEPOINTS 5

/* A raw tracepoint passes at most this many arguments. */
#define MAX_RAW_ARGS 12

#ifndef ENOTSUPP
#define ENOTSUPP 524  /* kernel-internal "not supported", seen by user space */
#endif

/* The budget of the preallocated histogram table: per-CPU values of about
 * this many bytes in all, within HIST_MIN..HIST_MAX entries.  A VM uses a
 * few entries per exit reason it produces. */
#define HIST_BUDGET (16u << 20)
#define HIST_MIN 256u
#define HIST_MAX 4096u
#define THREADS_DEFAULT 16384u

/* A vCPU thread: when each open state began (0: not open), and the totals
 * of the states that ended (read by kvmstat_dur_read_vcpus).  Only the
 * thread itself runs programs that write its entry, so plain adds suffice. */
struct thread_state {
    uint64_t user_ts;      /* kvm_userspace_exit, until the marker */
    uint64_t user_reason;
    uint64_t exit_ts;      /* kvm_exit, until kvm_entry or kvm_userspace_exit */
    uint64_t exit_reason;
    uint64_t entry_ts;     /* kvm_entry, until kvm_exit */
    uint64_t run_ts;       /* the marker (KVM_RUN begins), until kvm_userspace_exit */
    uint64_t pid_tgid;     /* tgid << 32 | tid */
    uint64_t run_ns;       /* totals: in KVM_RUN, */
    uint64_t vmm_ns;       /* in the VMM (user space), */
    uint64_t guest_ns;     /* in the guest, */
    uint64_t halt_ns;      /* halted (kvm_vcpu_wakeup's ns) */
};

struct hist_key {
    uint32_t kind;
    uint32_t tgid;
    uint64_t reason;
};

struct hist_value {
    uint64_t count;
    uint64_t sum;
    uint64_t max;   /* of generation gen */
    uint64_t gen;
    uint64_t buckets[KVMSTAT_DUR_BUCKETS];
};

_Static_assert(sizeof(struct hist_key) == 16, "hist_key must have no padding");
_Static_assert(sizeof(struct thread_state) == 88, "thread_state layout");
_Static_assert(sizeof(((struct kvmstat_dur_entry *)0)->buckets) ==
               KVMSTAT_DUR_BUCKETS * sizeof(uint64_t), "entry buckets");

#define OFF(type, member) ((int16_t)offsetof(struct type, member))

/* Stack slots (offsets from r10); the largest is the zeroed hist_value. */
#define FP_TID    (-8)    /* u32 tid: key of threads */
#define FP_ZERO   (-16)   /* u32 0: key of gen and drops */
#define FP_GEN    (-24)   /* u64 generation read from gen */
#define FP_HKEY   (-40)   /* struct hist_key */
#define FP_STATE  (FP_HKEY - (int)sizeof(struct thread_state))
#define FP_HVAL   (FP_STATE - (int)sizeof(struct hist_value))
_Static_assert(-FP_HVAL <= 512, "BPF stack is 512 bytes");

/* Registers kept across helper calls. */
#define R_CTX    KASM_R6  /* the record; later the bucket index */
#define R_IDS    KASM_R7  /* tgid << 32 | tid */
#define R_TIME   KASM_R8  /* a timestamp, then the duration */
#define R_REASON KASM_R9

struct maps {
    int threads, hist, gen, drops;
};

/* The buffers of a table read in batches: room for cap keys and their
 * values (value_size: one key's values, all CPUs' for a per-CPU map). */
struct batch {
    void *keys, *values;
    unsigned int cap;
    size_t key_size, value_size;
};

struct kvmstat_dur {
    struct maps maps;
    int prog_fds[NTRACEPOINTS];
    int link_fds[NTRACEPOINTS];  /* the perf event or the raw tracepoint */
    int attached[NTRACEPOINTS];  /* KVMSTAT_DUR_ATTACHED_* */
    unsigned int ncpus, max_entries;
    int use_iteration;
    /* Read buffers: a batch of keys and values of each table; the folded
     * results. */
    struct batch hist_batch, thread_batch;
    struct kvmstat_dur_entry *entries;
    unsigned int nentries, entries_cap;
    struct kvmstat_dur_vcpu *vcpus;
    unsigned int nvcpus, vcpus_cap;
};

/* ------------------------------------------------------------------------
 * Program pieces
 */

/* R_IDS = tgid << 32 | tid.  With a tgid in the configuration, the
 * program ends at once in other processes: returns 1 and sets *out then. */
static int emit_ids(struct kasm *a, const struct kvmstat_dur_config *c, kasm_label *out)
{
    kasm_call(a, BPF_FUNC_get_current_pid_tgid);
    kasm_mov_reg(a, R_IDS, KASM_R0);
    if (!c->tgid)
        return 0;
    kasm_mov_reg(a, KASM_R1, R_IDS);
    kasm_alu_imm(a, BPF_RSH, KASM_R1, 32);
    *out = kasm_jump_if(a, BPF_JNE, KASM_R1, (int32_t)c->tgid);
    return 1;
}

static void emit_time(struct kasm *a)
{
    kasm_call(a, BPF_FUNC_ktime_get_ns);
    kasm_mov_reg(a, R_TIME, KASM_R0);
}

/* r0 = lookup(map, fp + key). */
static void emit_lookup(struct kasm *a, int map_fd, int16_t key)
{
    kasm_load_map(a, KASM_R1, map_fd);
    kasm_stack_addr(a, KASM_R2, key);
    kasm_call(a, BPF_FUNC_map_lookup_elem);
}

/* r0 = the entry of fp + key, inserted as size zero bytes at fp + zeros
 * (with flags) when missing; returns the jump taken when r0 is still NULL
 * (the map is full).  The insertion's own result does not matter: with
 * BPF_NOEXIST another CPU may have inserted it meanwhile, and the second
 * lookup finds that entry. */
static kasm_label emit_lookup_or_insert(struct kasm *a, int map_fd, int16_t key,
                                        int16_t zeros, unsigned int size, int flags)
{
    emit_lookup(a, map_fd, key);
    kasm_label have = kasm_jump_if(a, BPF_JNE, KASM_R0, 0);
    for (unsigned int off = 0; off < size; off += 8)
        kasm_store_imm(a, BPF_DW, KASM_R10, (int16_t)(zeros + (int)off), 0);
    kasm_load_map(a, KASM_R1, map_fd);
    kasm_stack_addr(a, KASM_R2, key);
    kasm_stack_addr(a, KASM_R3, zeros);
    kasm_mov_imm(a, KASM_R4, flags);
    kasm_call(a, BPF_FUNC_map_update_elem);
    emit_lookup(a, map_fd, key);
    kasm_label missing = kasm_jump_if(a, BPF_JEQ, KASM_R0, 0);
    kasm_land(a, have);
    return missing;
}

/* r0 = this thread's state; jumps to *out when there is none (with create:
 * only if it could not be made either). */
static void emit_state(struct kasm *a, const struct maps *m, int create, kasm_label *out)
{
    kasm_store_reg(a, BPF_W, KASM_R10, FP_TID, R_IDS);
    if (!create) {
        emit_lookup(a, m->threads, FP_TID);
        *out = kasm_jump_if(a, BPF_JEQ, KASM_R0, 0);
        return;
    }
    *out = emit_lookup_or_insert(a, m->threads, FP_TID, FP_STATE,
                                 sizeof(struct thread_state), BPF_ANY);
}

/* R_CTX = floor(log2(R_TIME)) clamped to the last bucket (0 for 0 and 1):
 * six shift-and-test steps, no loop. */
static void emit_bucket_index(struct kasm *a)
{
    kasm_mov_reg(a, KASM_R1, R_TIME);
    kasm_mov_imm(a, R_CTX, 0);
    for (int shift = 32; shift >= 1; shift /= 2) {
        kasm_mov_reg(a, KASM_R2, KASM_R1);
        kasm_alu_imm(a, BPF_RSH, KASM_R2, shift);
        kasm_label skip = kasm_jump_if(a, BPF_JEQ, KASM_R2, 0);
        kasm_mov_reg(a, KASM_R1, KASM_R2);
        kasm_alu_imm(a, BPF_ADD, R_CTX, shift);
        kasm_land(a, skip);
    }
    kasm_label in_range = kasm_jump_if(a, BPF_JLE, R_CTX, KVMSTAT_DUR_BUCKETS - 1);
    kasm_mov_imm(a, R_CTX, KVMSTAT_DUR_BUCKETS - 1);
    kasm_land(a, in_range);
}

/*
 * Add the duration R_TIME to the histogram (kind, tgid, R_REASON); the
 * program's end follows.  Clobbers R_CTX.  The value is this CPU's slot of
 * a per-CPU map, so plain adds suffice (tracing programs do not nest on a
 * CPU).  max is kept per generation: a slot last written in an older
 * generation starts over.
 */
static void emit_record(struct kasm *a, const struct maps *m, uint32_t kind)
{
    kasm_label out[3];
    unsigned int nout = 0;

    emit_bucket_index(a);

    kasm_store_imm(a, BPF_W, KASM_R10, FP_ZERO, 0);
    emit_lookup(a, m->gen, FP_ZERO);
    out[nout++] = kasm_jump_if(a, BPF_JEQ, KASM_R0, 0);
    kasm_load(a, BPF_DW, KASM_R1, KASM_R0, 0);
    kasm_store_reg(a, BPF_DW, KASM_R10, FP_GEN, KASM_R1);

    kasm_store_imm(a, BPF_W, KASM_R10, (int16_t)(FP_HKEY + OFF(hist_key, kind)), (int32_t)kind);
    kasm_mov_reg(a, KASM_R1, R_IDS);
    kasm_alu_imm(a, BPF_RSH, KASM_R1, 32);
    kasm_store_reg(a, BPF_W, KASM_R10, (int16_t)(FP_HKEY + OFF(hist_key, tgid)), KASM_R1);
    kasm_store_reg(a, BPF_DW, KASM_R10, (int16_t)(FP_HKEY + OFF(hist_key, reason)), R_REASON);

    /* A new histogram is inserted as zeros. */
    kasm_label full = emit_lookup_or_insert(a, m->hist, FP_HKEY, FP_HVAL,
                                            sizeof(struct hist_value), BPF_NOEXIST);
    kasm_label found = kasm_jump(a);
    /* The table is full: count the lost duration. */
    kasm_land(a, full);
    emit_lookup(a, m->drops, FP_ZERO);
    out[nout++] = kasm_jump_if(a, BPF_JEQ, KASM_R0, 0);
    kasm_increment_at(a, KASM_R0, KASM_R1);
    out[nout++] = kasm_jump(a);

    kasm_land(a, found);
    kasm_increment_at(a, KASM_R0, KASM_R1);  /* count */
    kasm_load(a, BPF_DW, KASM_R1, KASM_R0, OFF(hist_value, sum));
    kasm_alu_reg(a, BPF_ADD, KASM_R1, R_TIME);
    kasm_store_reg(a, BPF_DW, KASM_R0, OFF(hist_value, sum), KASM_R1);
    kasm_mov_reg(a, KASM_R1, R_CTX);
    kasm_alu_imm(a, BPF_LSH, KASM_R1, 3);
    kasm_mov_reg(a, KASM_R2, KASM_R0);
    kasm_alu_reg(a, BPF_ADD, KASM_R2, KASM_R1);
    kasm_load(a, BPF_DW, KASM_R1, KASM_R2, OFF(hist_value, buckets));
    kasm_alu_imm(a, BPF_ADD, KASM_R1, 1);
    kasm_store_reg(a, BPF_DW, KASM_R2, OFF(hist_value, buckets), KASM_R1);

    kasm_load(a, BPF_DW, KASM_R1, KASM_R0, OFF(hist_value, gen));
    kasm_load(a, BPF_DW, KASM_R2, KASM_R10, FP_GEN);
    kasm_label same = kasm_jump_if_reg(a, BPF_JEQ, KASM_R1, KASM_R2);
    kasm_store_reg(a, BPF_DW, KASM_R0, OFF(hist_value, gen), KASM_R2);
    kasm_store_reg(a, BPF_DW, KASM_R0, OFF(hist_value, max), R_TIME);
    kasm_label done = kasm_jump(a);
    kasm_land(a, same);
    kasm_load(a, BPF_DW, KASM_R1, KASM_R0, OFF(hist_value, max));
    kasm_label smaller = kasm_jump_if_reg(a, BPF_JGE, KASM_R1, R_TIME);
    kasm_store_reg(a, BPF_DW, KASM_R0, OFF(hist_value, max), R_TIME);
    kasm_land(a, smaller);
    kasm_land(a, done);
    for (unsigned int i = 0; i < nout; i++)
        kasm_land(a, out[i]);
}

/* dst = the field of tp (zero-extended): in the record, or in raw mode in
 * its argument (a u64 slot; the value in its low-order bytes). */
static void emit_field(struct kasm *a, int dst, const struct kvmstat_dur_tracepoint *tp, int raw)
{
    int off = tp->offset;
    if (raw) {
        off = 8 * tp->arg;
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        off += 8 - (int)tp->size;
#endif
    }
    kasm_load(a, kasm_size_code(tp->size), dst, R_CTX, (int16_t)off);
}

/* "if (prev = *(u64 *)(r0 + off)) == 0 goto out" after "*(r0 + off) = 0";
 * returns the label.  prev lands in r1. */
static kasm_label emit_take(struct kasm *a, int16_t off)
{
    kasm_load(a, BPF_DW, KASM_R1, KASM_R0, off);
    kasm_store_imm(a, BPF_DW, KASM_R0, off, 0);
    return kasm_jump_if(a, BPF_JEQ, KASM_R1, 0);
}

/* The program ends: return 1, so other perf users of the tracepoint still
 * see the hit (see kvmstat_bpf_prog.c). */
static void emit_end(struct kasm *a, kasm_label *out, unsigned int nout)
{
    for (unsigned int i = 0; i < nout; i++)
        kasm_land(a, out[i]);
    kasm_return(a, 1);
}

/* A program where one state of the thread begins and another ends: the
 * state at start_ts begins now (with the record's reason at start_reason,
 * if >= 0); the one at end_ts ends, its duration is recorded as kind, with
 * the reason kept at end_reason (if >= 0, else 0), and added to the total
 * at end_sum (if >= 0).  The state at close_ts (if >= 0) ends too, its
 * duration only added to the total at close_sum; the one at clear_ts (if
 * >= 0) is dropped. */
struct transition {
    int16_t start_ts, start_reason;
    int16_t end_ts, end_reason, end_sum;
    int16_t close_ts, close_sum;
    int16_t clear_ts;  /* a state that cannot be open any more (-1: none) */
    uint32_t kind;
    int in_run;  /* the tracepoint fires inside KVM_RUN (see emit_in_run) */
};

/* kvm_userspace_exit: the VMM's time starts; KVM_RUN ends, and a kernel
 * interval (kvm_exit seen) with it; no guest time can be open (a guest
 * interval without its kvm_exit is dropped, not counted on in user space).  The marker: KVM_RUN starts; the VMM's
 * time ends.  kvm_exit: the kernel's time starts; the guest's ends.
 * kvm_entry: the guest's time starts; the kernel's ends. */
static const struct transition USERSPACE_EXIT = {
    OFF(thread_state, user_ts), OFF(thread_state, user_reason),
    OFF(thread_state, exit_ts), OFF(thread_state, exit_reason), -1,
    OFF(thread_state, run_ts), OFF(thread_state, run_ns), OFF(thread_state, entry_ts),
    KVMSTAT_DUR_KERNEL, 0,
};
static const struct transition MARKER = {
    OFF(thread_state, run_ts), -1,
    OFF(thread_state, user_ts), OFF(thread_state, user_reason), OFF(thread_state, vmm_ns),
    -1, -1, -1, KVMSTAT_DUR_VMM, 0,
};
static const struct transition EXIT = {
    OFF(thread_state, exit_ts), OFF(thread_state, exit_reason),
    OFF(thread_state, entry_ts), -1, OFF(thread_state, guest_ns),
    -1, -1, -1, KVMSTAT_DUR_GUEST, 1,
};
static const struct transition ENTRY = {
    OFF(thread_state, entry_ts), -1,
    OFF(thread_state, exit_ts), OFF(thread_state, exit_reason), -1,
    -1, -1, -1, KVMSTAT_DUR_KERNEL, 1,
};

/* *(u64 *)(r0 + sum) += R_TIME - r1 (R_TIME: now, r1: when the state
 * began). */
static void emit_add_since(struct kasm *a, int16_t sum)
{
    kasm_mov_reg(a, KASM_R2, R_TIME);
    kasm_alu_reg(a, BPF_SUB, KASM_R2, KASM_R1);
    kasm_load(a, BPF_DW, KASM_R1, KASM_R0, sum);
    kasm_alu_reg(a, BPF_ADD, KASM_R1, KASM_R2);
    kasm_store_reg(a, BPF_DW, KASM_R0, sum, KASM_R1);
}

/* A tracepoint that fires inside KVM_RUN (kvm_exit, kvm_entry,
 * kvm_vcpu_wakeup) in a thread whose state is not known yet (it was in
 * KVM_RUN when the engine started): KVM_RUN began at the latest at reg's
 * time.  r0: the thread's entry; clobbers r1. */
static void emit_in_run(struct kasm *a, int reg)
{
    kasm_load(a, BPF_DW, KASM_R1, KASM_R0, OFF(thread_state, run_ts));
    kasm_label known = kasm_jump_if(a, BPF_JNE, KASM_R1, 0);
    kasm_load(a, BPF_DW, KASM_R1, KASM_R0, OFF(thread_state, user_ts));
    kasm_label in_vmm = kasm_jump_if(a, BPF_JNE, KASM_R1, 0);
    kasm_store_reg(a, BPF_DW, KASM_R0, OFF(thread_state, run_ts), reg);
    kasm_land(a, known);
    kasm_land(a, in_vmm);
}

/* reason: the tracepoint whose field is the reason of the state that
 * begins (NULL: none).  guard: a tracepoint whose field must equal
 * c->marker_value, else the program ends (NULL: none). */
static void assemble_transition(struct kasm *a, const struct maps *m,
                                const struct kvmstat_dur_config *c,
                                const struct kvmstat_dur_tracepoint *reason,
                                const struct kvmstat_dur_tracepoint *guard,
                                const struct transition *t, int raw)
{
    kasm_label out[4];
    unsigned int nout = 0;

    kasm_mov_reg(a, R_CTX, KASM_R1);
    if (guard) {
        emit_field(a, KASM_R1, guard, raw);
        out[nout++] = kasm_jump_if(a, BPF_JNE, KASM_R1, (int32_t)c->marker_value);
    }
    nout += (unsigned int)emit_ids(a, c, &out[nout]);
    emit_time(a);
    if (reason)
        emit_field(a, R_REASON, reason, raw);
    emit_state(a, m, 1, &out[nout++]);
    kasm_store_reg(a, BPF_DW, KASM_R0, OFF(thread_state, pid_tgid), R_IDS);
    if (t->in_run)
        emit_in_run(a, R_TIME);
    kasm_store_reg(a, BPF_DW, KASM_R0, t->start_ts, R_TIME);
    if (t->start_reason >= 0)
        kasm_store_reg(a, BPF_DW, KASM_R0, t->start_reason, R_REASON);
    if (t->clear_ts >= 0)
        kasm_store_imm(a, BPF_DW, KASM_R0, t->clear_ts, 0);
    if (t->close_ts >= 0) {
        kasm_load(a, BPF_DW, KASM_R1, KASM_R0, t->close_ts);
        kasm_store_imm(a, BPF_DW, KASM_R0, t->close_ts, 0);
        kasm_label was_closed = kasm_jump_if(a, BPF_JEQ, KASM_R1, 0);
        emit_add_since(a, t->close_sum);
        kasm_land(a, was_closed);
    }
    out[nout++] = emit_take(a, t->end_ts);
    kasm_alu_reg(a, BPF_SUB, R_TIME, KASM_R1);  /* now the duration */
    if (t->end_sum >= 0) {
        kasm_load(a, BPF_DW, KASM_R1, KASM_R0, t->end_sum);
        kasm_alu_reg(a, BPF_ADD, KASM_R1, R_TIME);
        kasm_store_reg(a, BPF_DW, KASM_R0, t->end_sum, KASM_R1);
    }
    if (t->end_reason >= 0)
        kasm_load(a, BPF_DW, R_REASON, KASM_R0, t->end_reason);
    else
        kasm_mov_imm(a, R_REASON, 0);
    emit_record(a, m, t->kind);
    emit_end(a, out, nout);
}

/* kvm_vcpu_wakeup: the halt's length is in the record; it is added to the
 * thread's halted total too (if the thread's entry cannot be made, the
 * histogram still gets it). */
static void assemble_wakeup(struct kasm *a, const struct maps *m,
                            const struct kvmstat_dur_config *c, int raw)
{
    struct kvmstat_dur_tracepoint waited = {
        c->wakeup.id, c->wakeup_waited_offset, 1, c->wakeup.name, c->wakeup_waited_arg,
    };
    kasm_label out[1], no_state;
    unsigned int nout = 0;

    kasm_mov_reg(a, R_CTX, KASM_R1);
    nout += (unsigned int)emit_ids(a, c, &out[nout]);
    emit_field(a, R_TIME, &c->wakeup, raw);
    emit_field(a, R_REASON, &waited, raw);
    /* R_CTX (the fields are read) = when the halt began: now - its length. */
    kasm_call(a, BPF_FUNC_ktime_get_ns);
    kasm_mov_reg(a, R_CTX, KASM_R0);
    kasm_alu_reg(a, BPF_SUB, R_CTX, R_TIME);
    emit_state(a, m, 1, &no_state);
    kasm_store_reg(a, BPF_DW, KASM_R0, OFF(thread_state, pid_tgid), R_IDS);
    emit_in_run(a, R_CTX);
    kasm_load(a, BPF_DW, KASM_R1, KASM_R0, OFF(thread_state, halt_ns));
    kasm_alu_reg(a, BPF_ADD, KASM_R1, R_TIME);
    kasm_store_reg(a, BPF_DW, KASM_R0, OFF(thread_state, halt_ns), KASM_R1);
    kasm_land(a, no_state);
    emit_record(a, m, KVMSTAT_DUR_HALT);
    emit_end(a, out, nout);
}

/* ------------------------------------------------------------------------
 * Creation
 */

static const struct kvmstat_dur_tracepoint *tracepoint_at(const struct kvmstat_dur_config *c,
                                                          int i)
{
    switch (i) {
    case KVMSTAT_DUR_TP_USERSPACE_EXIT: return &c->userspace_exit;
    case KVMSTAT_DUR_TP_MARKER: return &c->marker;
    case KVMSTAT_DUR_TP_EXIT: return &c->exit;
    case KVMSTAT_DUR_TP_ENTRY: return &c->entry;
    default: return &c->wakeup;
    }
}

/* Which tracepoints need which field: -EINVAL for a bad one. */
static int check_config(const struct kvmstat_dur_config *c, int *bad)
{
    static const int needs_field[NTRACEPOINTS] = { 1, 1, 1, 0, 1 };

    if (!c->userspace_exit.id || !c->marker.id) {
        *bad = c->userspace_exit.id ? KVMSTAT_DUR_TP_MARKER : KVMSTAT_DUR_TP_USERSPACE_EXIT;
        return -EINVAL;
    }
    for (int i = 0; i < NTRACEPOINTS; i++) {
        const struct kvmstat_dur_tracepoint *tp = tracepoint_at(c, i);
        *bad = i;
        if (!tp->id || !needs_field[i])
            continue;
        if (tp->offset < 0 || tp->offset > INT16_MAX || kasm_size_code(tp->size) < 0 ||
            tp->arg >= MAX_RAW_ARGS)
            return -EINVAL;
    }
    if (c->wakeup.id && (c->wakeup_waited_offset < 0 || c->wakeup_waited_offset > INT16_MAX ||
                         c->wakeup_waited_arg >= MAX_RAW_ARGS))
        return -EINVAL;
    if (c->exit.id && !c->entry.id) {  /* kernel intervals would never end */
        *bad = KVMSTAT_DUR_TP_ENTRY;
        return -EINVAL;
    }
    *bad = -1;
    return 0;
}

static void set_error(struct kvmstat_bpf_error *err, int stage, int index, int rc)
{
    if (err) {
        err->stage = stage;
        err->event_index = index;
        err->err = -rc;
    }
}

static void assemble(struct kasm *a, int i, const struct maps *m,
                     const struct kvmstat_dur_config *c, int raw)
{
    switch (i) {
    case KVMSTAT_DUR_TP_USERSPACE_EXIT:
        assemble_transition(a, m, c, &c->userspace_exit, NULL, &USERSPACE_EXIT, raw);
        break;
    case KVMSTAT_DUR_TP_MARKER:
        assemble_transition(a, m, c, NULL, &c->marker, &MARKER, raw);
        break;
    case KVMSTAT_DUR_TP_EXIT: assemble_transition(a, m, c, &c->exit, NULL, &EXIT, raw); break;
    case KVMSTAT_DUR_TP_ENTRY: assemble_transition(a, m, c, NULL, NULL, &ENTRY, raw); break;
    default: assemble_wakeup(a, m, c, raw); break;
    }
}

/* Can tracepoint i's program read what it needs as a raw tracepoint? */
static int raw_possible(const struct kvmstat_dur_config *c, int i)
{
    const struct kvmstat_dur_tracepoint *tp = tracepoint_at(c, i);

    if (c->attach == KVMSTAT_DUR_ATTACH_PERF || !tp->name || !tp->name[0])
        return 0;
    if (i == KVMSTAT_DUR_TP_ENTRY)  /* reads no field */
        return 1;
    if (i == KVMSTAT_DUR_TP_WAKEUP && c->wakeup_waited_arg < 0)
        return 0;
    return tp->arg >= 0;
}

/* Load program i in one shape (raw or perf) and attach it; 0 or -errno
 * with *stage set. */
static int load_and_attach(struct kvmstat_dur *d, int i, const struct kvmstat_dur_config *c,
                           int raw, char *log, unsigned int log_size, int *stage)
{
    static const char *const names[NTRACEPOINTS] = {
        "kvmstat_d_user", "kvmstat_d_mark", "kvmstat_d_exit", "kvmstat_d_entry",
        "kvmstat_d_wake",
    };
    struct kasm a;
    int rc;

    kasm_init(&a);
    assemble(&a, i, &d->maps, c, raw);
    rc = kasm_error(&a);
    if (rc == 0)
        rc = ksys_prog_load(raw ? BPF_PROG_TYPE_RAW_TRACEPOINT : BPF_PROG_TYPE_TRACEPOINT, 0,
                            a.insn, a.n, names[i], log, log_size);
    kasm_release(&a);
    *stage = KVMSTAT_BPF_STAGE_LOAD;
    if (rc < 0)
        return rc;
    d->prog_fds[i] = rc;
    if (raw) {
        *stage = KVMSTAT_BPF_STAGE_ATTACH;
        rc = ksys_raw_tracepoint_open(tracepoint_at(c, i)->name, d->prog_fds[i]);
        if (rc < 0)
            return rc;
        d->link_fds[i] = rc;
        d->attached[i] = KVMSTAT_DUR_ATTACHED_RAW;
        return 0;
    }
    *stage = KVMSTAT_BPF_STAGE_OPEN;
    rc = ksys_perf_open_tracepoint(tracepoint_at(c, i)->id);
    if (rc < 0)
        return rc;
    d->link_fds[i] = rc;
    *stage = KVMSTAT_BPF_STAGE_ATTACH;
    rc = ksys_perf_attach_bpf(d->link_fds[i], d->prog_fds[i]);
    if (rc < 0)
        return rc;
    d->attached[i] = KVMSTAT_DUR_ATTACHED_PERF;
    return 0;
}

/* Attach tracepoint i's program: raw where possible; where the kernel
 * refuses that (older kernels, a module's tracepoint it cannot find by
 * name), through perf. */
static int attach(struct kvmstat_dur *d, int i, const struct kvmstat_dur_config *c,
                  char *log, unsigned int log_size, struct kvmstat_bpf_error *err)
{
    int stage, rc;

    if (raw_possible(c, i)) {
        rc = load_and_attach(d, i, c, 1, NULL, 0, &stage);
        if (rc == 0)
            return 0;
        ksys_close(&d->link_fds[i]);
        ksys_close(&d->prog_fds[i]);
    }
    rc = load_and_attach(d, i, c, 0, log, log_size, &stage);
    if (rc < 0)
        set_error(err, stage, i, rc);
    return rc;
}

/* Room for cap keys and their values in b. */
static int grow_batch(struct batch *b, unsigned int cap)
{
    void *k = realloc(b->keys, cap * b->key_size);
    if (!k)
        return -ENOMEM;
    b->keys = k;
    void *v = realloc(b->values, cap * b->value_size);
    if (!v)
        return -ENOMEM;
    b->values = v;
    b->cap = cap;
    return 0;
}

static unsigned int default_entries(unsigned int ncpus)
{
    size_t n = HIST_BUDGET / ((size_t)ncpus * sizeof(struct hist_value));
    return (unsigned int)(n < HIST_MIN ? HIST_MIN : n > HIST_MAX ? HIST_MAX : n);
}

static int make_maps(struct kvmstat_dur *d, const struct kvmstat_dur_config *c)
{
    int rc = d->maps.drops = ksys_map_create(BPF_MAP_TYPE_PERCPU_ARRAY, sizeof(uint32_t),
                                             sizeof(uint64_t), 1, 0, "kvmstat_d_drops");
    if (rc < 0)
        return rc;
    rc = ksys_possible_cpus(d->maps.drops);
    if (rc < 0)
        return rc;
    d->ncpus = (unsigned int)rc;
    d->max_entries = c->max_entries ? c->max_entries : default_entries(d->ncpus);
    /* Preallocated, like the count table of the counting engine: a program
     * never has to allocate, which could fail and lose a duration. */
    rc = d->maps.hist = ksys_map_create(BPF_MAP_TYPE_PERCPU_HASH, sizeof(struct hist_key),
                                        sizeof(struct hist_value), d->max_entries, 0,
                                        "kvmstat_d_hist");
    if (rc < 0)
        return rc;
    /* LRU: threads that end with a state open are evicted in time. */
    rc = d->maps.threads = ksys_map_create(BPF_MAP_TYPE_LRU_HASH, sizeof(uint32_t),
                                           sizeof(struct thread_state),
                                           c->max_threads ? c->max_threads : THREADS_DEFAULT,
                                           0, "kvmstat_d_thr");
    if (rc < 0)
        return rc;
    rc = d->maps.gen = ksys_map_create(BPF_MAP_TYPE_ARRAY, sizeof(uint32_t),
                                       sizeof(uint64_t), 1, 0, "kvmstat_d_gen");
    return rc < 0 ? rc : 0;
}

int kvmstat_dur_new(const struct kvmstat_dur_config *cfg, char *log,
                    unsigned int log_size, struct kvmstat_bpf_error *err,
                    struct kvmstat_dur **out)
{
    int rc, bad;

    if (log && log_size)
        log[0] = '\0';
    if (!cfg || !out) {
        set_error(err, 0, -1, -EINVAL);
        return -EINVAL;
    }
    *out = NULL;
    rc = check_config(cfg, &bad);
    if (rc < 0) {
        set_error(err, KVMSTAT_BPF_STAGE_LOAD, bad, rc);
        return rc;
    }
    struct kvmstat_dur *d = calloc(1, sizeof(*d));
    if (!d) {
        set_error(err, 0, -1, -ENOMEM);
        return -ENOMEM;
    }
    d->maps.threads = d->maps.hist = d->maps.gen = d->maps.drops = -1;
    for (int i = 0; i < NTRACEPOINTS; i++)
        d->prog_fds[i] = d->link_fds[i] = -1;  /* attached[]: NONE, by calloc */

    rc = make_maps(d, cfg);
    if (rc < 0) {
        set_error(err, d->ncpus ? KVMSTAT_BPF_STAGE_MAP : KVMSTAT_BPF_STAGE_CPUS, -1, rc);
        if (d->maps.drops < 0)
            set_error(err, KVMSTAT_BPF_STAGE_MAP, -1, rc);
        goto fail;
    }
    d->hist_batch.key_size = sizeof(struct hist_key);
    d->hist_batch.value_size = d->ncpus * sizeof(struct hist_value);
    d->thread_batch.key_size = sizeof(uint32_t);
    d->thread_batch.value_size = sizeof(struct thread_state);
    if (grow_batch(&d->hist_batch, 64) < 0 || grow_batch(&d->thread_batch, 256) < 0) {
        rc = -ENOMEM;
        set_error(err, 0, -1, rc);
        goto fail;
    }
    /* The marker last: a VMM interval must begin before one can end. */
    static const int order[NTRACEPOINTS] = {
        KVMSTAT_DUR_TP_WAKEUP, KVMSTAT_DUR_TP_ENTRY, KVMSTAT_DUR_TP_EXIT,
        KVMSTAT_DUR_TP_USERSPACE_EXIT, KVMSTAT_DUR_TP_MARKER,
    };
    for (int k = 0; k < NTRACEPOINTS; k++) {
        int i = order[k];
        if (!tracepoint_at(cfg, i)->id)
            continue;
        rc = attach(d, i, cfg, log, log_size, err);
        if (rc < 0)
            goto fail;
    }
    *out = d;
    return 0;

fail:
    kvmstat_dur_free(d);
    return rc;
}

/* ------------------------------------------------------------------------
 * Reading
 */

static int reserve(struct kvmstat_dur *d, unsigned int more)
{
    void *entries = d->entries;
    int rc = kvmstat_array_reserve(&entries, &d->entries_cap, d->nentries, more,
                                   sizeof(*d->entries), 32, UINT32_MAX / 2);
    d->entries = entries;
    return rc;
}

/* A read in progress: what to do with each fetched batch. */
struct reading {
    struct kvmstat_dur *d;
    struct batch *b;
    int (*fold)(struct reading *r, unsigned int n);
    uint64_t gen;  /* of max_ns, for histograms */
};

/* Fold n fetched histograms (per-CPU values) into entries; max_ns only
 * from the slots written in generation gen. */
static int fold_hist(struct reading *r, unsigned int n)
{
    struct kvmstat_dur *d = r->d;
    const struct hist_key *keys = r->b->keys;
    int rc = reserve(d, n);
    if (rc < 0)
        return rc;
    for (unsigned int i = 0; i < n; i++) {
        struct kvmstat_dur_entry *e = &d->entries[d->nentries++];
        const struct hist_value *v = (const struct hist_value *)r->b->values + (size_t)i * d->ncpus;

        memset(e, 0, sizeof(*e));
        e->kind = keys[i].kind;
        e->tgid = keys[i].tgid;
        e->reason = keys[i].reason;
        for (unsigned int c = 0; c < d->ncpus; c++) {
            e->count += v[c].count;
            e->sum_ns += v[c].sum;
            if (v[c].gen == r->gen && v[c].max > e->max_ns)
                e->max_ns = v[c].max;
            for (unsigned int b = 0; b < KVMSTAT_DUR_BUCKETS; b++)
                e->buckets[b] += v[c].buckets[b];
        }
    }
    return 0;
}

static int fetch_batch(struct reading *r, int fd)
{
    uint64_t in_token[2] = { 0, 0 }, out_token[2] = { 0, 0 };
    int first = 1;

    for (;;) {
        uint32_t count = r->b->cap;
        int rc = ksys_map_lookup_batch(fd, first ? NULL : in_token, out_token,
                                       r->b->keys, r->b->values, &count);
        if (rc < 0 && rc != -ENOENT) {
            /* A hash bucket holds more keys than the buffers: grow them. */
            if (rc == -ENOSPC && count == 0 && r->b->cap < (1u << 20)) {
                rc = grow_batch(r->b, r->b->cap * 2);
                if (rc < 0)
                    return rc;
                continue;
            }
            return rc;
        }
        int frc = r->fold(r, count);
        if (frc < 0)
            return frc;
        if (rc == -ENOENT)
            return 0;
        memcpy(in_token, out_token, sizeof(in_token));
        first = 0;
    }
}

/* One entry of a key iteration: its values are in the first slot. */
static int fold_visited(void *ctx, const void *key)
{
    struct reading *r = ctx;
    memcpy(r->b->keys, key, r->b->key_size);
    return r->fold(r, 1);
}

/* Fetch table fd in batches, or by key iteration on kernels without batch
 * lookups (before 5.6); *folded: whether a batch was folded already. */
static int fetch(struct reading *r, int fd, const unsigned int *folded)
{
    struct kvmstat_dur *d = r->d;
    uint64_t key[2], next[2];  /* room for the largest key */

    if (!d->use_iteration) {
        int rc = fetch_batch(r, fd);
        if ((rc == -EINVAL || rc == -ENOTSUPP || rc == -EOPNOTSUPP) && *folded == 0)
            d->use_iteration = 1;
        else
            return rc;
    }
    return ksys_map_walk(fd, key, next, r->b->key_size, r->b->values, fold_visited, r);
}

int kvmstat_dur_read(struct kvmstat_dur *d, uint64_t *dropped)
{
    uint32_t zero = 0;
    struct reading r = { d, NULL, fold_hist, 0 };

    if (!d)
        return -EINVAL;
    r.b = &d->hist_batch;
    int rc = ksys_map_lookup(d->maps.gen, &zero, &r.gen);
    if (rc < 0)
        return rc;
    d->nentries = 0;
    rc = fetch(&r, d->maps.hist, &d->nentries);
    if (rc < 0)
        return rc;
    /* A new generation: maxima recorded from now on belong to the next read. */
    uint64_t gen = r.gen + 1;
    rc = ksys_map_update(d->maps.gen, &zero, &gen);
    if (rc < 0)
        return rc;
    if (dropped) {
        uint64_t *slots = d->hist_batch.values;  /* ncpus u64 fit in one key's values */
        rc = ksys_map_lookup(d->maps.drops, &zero, slots);
        if (rc < 0)
            return rc;
        *dropped = 0;
        for (unsigned int c = 0; c < d->ncpus; c++)
            *dropped += slots[c];
    }
    return (int)d->nentries;
}

/* The programs' clock: bpf_ktime_get_ns is CLOCK_MONOTONIC. */
static uint64_t monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Fold n fetched thread entries into vCPUs, each open state counted until
 * now: read after the batch was copied, so no state in it began later.
 * r->gen keeps the last now. */
static int fold_vcpus(struct reading *r, unsigned int n)
{
    struct kvmstat_dur *d = r->d;
    const struct thread_state *t = r->b->values;
    void *vcpus = d->vcpus;
    int rc = kvmstat_array_reserve(&vcpus, &d->vcpus_cap, d->nvcpus, n, sizeof(*d->vcpus),
                                   64, UINT32_MAX / 2);
    d->vcpus = vcpus;
    if (rc < 0)
        return rc;
    uint64_t now = r->gen = monotonic_ns();
    for (unsigned int i = 0; i < n; i++, t++) {
        struct kvmstat_dur_vcpu *v = &d->vcpus[d->nvcpus++];

        v->tid = ((const uint32_t *)r->b->keys)[i];
        v->tgid = (uint32_t)(t->pid_tgid >> 32);
        v->run_ns = t->run_ns + (t->run_ts && t->run_ts < now ? now - t->run_ts : 0);
        v->vmm_ns = t->vmm_ns + (t->user_ts && t->user_ts < now ? now - t->user_ts : 0);
        v->guest_ns = t->guest_ns + (t->entry_ts && t->entry_ts < now ? now - t->entry_ts : 0);
        v->halt_ns = t->halt_ns;
    }
    return 0;
}

int kvmstat_dur_read_vcpus(struct kvmstat_dur *d, uint64_t *now_ns)
{
    struct reading r = { d, NULL, fold_vcpus, 0 };

    if (!d)
        return -EINVAL;
    r.b = &d->thread_batch;
    d->nvcpus = 0;
    int rc = fetch(&r, d->maps.threads, &d->nvcpus);
    if (rc < 0)
        return rc;
    if (now_ns)
        *now_ns = d->nvcpus ? r.gen : monotonic_ns();
    return (int)d->nvcpus;
}

int kvmstat_dur_copy_vcpus(const struct kvmstat_dur *d, struct kvmstat_dur_vcpu *out,
                           unsigned int cap)
{
    if (!d || (cap && !out))
        return -EINVAL;
    unsigned int n = d->nvcpus < cap ? d->nvcpus : cap;
    if (n)
        memcpy(out, d->vcpus, n * sizeof(*out));
    return (int)n;
}

int kvmstat_dur_forget_vcpu(struct kvmstat_dur *d, uint32_t tid)
{
    if (!d)
        return -EINVAL;
    int rc = ksys_map_delete(d->maps.threads, &tid);
    return rc == -ENOENT ? 0 : rc;
}

int kvmstat_dur_copy(const struct kvmstat_dur *d, struct kvmstat_dur_entry *out,
                     unsigned int cap)
{
    if (!d || (cap && !out))
        return -EINVAL;
    unsigned int n = d->nentries < cap ? d->nentries : cap;
    if (n)
        memcpy(out, d->entries, n * sizeof(*out));
    return (int)n;
}

/* Delete every key of a map (next: room for one key). */
static int clear_map(int fd, void *next)
{
    for (;;) {
        int rc = ksys_map_next_key(fd, NULL, next);
        if (rc == -ENOENT)
            return 0;
        if (rc < 0)
            return rc;
        rc = ksys_map_delete(fd, next);
        if (rc < 0 && rc != -ENOENT)
            return rc;
    }
}

int kvmstat_dur_reset(struct kvmstat_dur *d)
{
    struct hist_key hnext;
    uint32_t tnext, zero = 0;

    if (!d)
        return -EINVAL;
    int rc = clear_map(d->maps.hist, &hnext);
    if (rc == 0)
        rc = clear_map(d->maps.threads, &tnext);
    if (rc < 0)
        return rc;
    memset(d->hist_batch.values, 0, d->ncpus * sizeof(uint64_t));
    rc = ksys_map_update(d->maps.drops, &zero, d->hist_batch.values);
    d->nentries = d->nvcpus = 0;
    return rc < 0 ? rc : 0;
}

int kvmstat_dur_fds(const struct kvmstat_dur *d)
{
    if (!d)
        return -EINVAL;
    int n = 4;
    for (int i = 0; i < NTRACEPOINTS; i++)
        n += (d->prog_fds[i] >= 0) + (d->link_fds[i] >= 0);
    return n;
}

int kvmstat_dur_force_iteration(struct kvmstat_dur *d)
{
    if (!d)
        return -EINVAL;
    d->use_iteration = 1;
    return 0;
}

int kvmstat_dur_attached(const struct kvmstat_dur *d, unsigned int tp)
{
    if (!d || tp >= NTRACEPOINTS)
        return -EINVAL;
    return d->attached[tp];
}

int kvmstat_dur_max_entries(const struct kvmstat_dur *d)
{
    return d ? (int)d->max_entries : -EINVAL;
}

int kvmstat_dur_ncpus(const struct kvmstat_dur *d)
{
    return d ? (int)d->ncpus : -EINVAL;
}

void kvmstat_dur_free(struct kvmstat_dur *d)
{
    if (!d)
        return;
    for (int i = 0; i < NTRACEPOINTS; i++) {
        ksys_close(&d->link_fds[i]);
        ksys_close(&d->prog_fds[i]);
    }
    ksys_close(&d->maps.threads);
    ksys_close(&d->maps.hist);
    ksys_close(&d->maps.gen);
    ksys_close(&d->maps.drops);
    free(d->hist_batch.keys);
    free(d->hist_batch.values);
    free(d->thread_batch.keys);
    free(d->thread_batch.values);
    free(d->entries);
    free(d->vcpus);
    free(d);
}
