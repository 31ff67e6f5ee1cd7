/*
 * The BPF engine's counting programs: one per tracepoint, assembled with
 * kvmstat_bpf_asm.h, in the shape the engine's layout and the event's
 * attachment ask for (struct counter_shape).
 *
 * Registers kept across helper calls: r6 = the context (raw tracepoint:
 * the arguments, u64 each; perf: the trace record), r7 = the current tgid,
 * r8 = the reason or the slot.
 */
#include "kvmstat_bpf_engine.h"
#include "kvmstat_bpf_asm.h"
#include "kvmstat_sys.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>

/* Stack slots of the programs (offsets from the frame pointer r10). */
#define FP_KEY     (-16)  /* struct count_key */
#define FP_KEY_AT(member) ((int16_t)(FP_KEY + (int)offsetof(struct count_key, member)))
#define FP_ONE     (-24)  /* u64 1: the value of a new entry */
#define FP_ZERO    (-32)  /* u32 0: the key of the dropped counter */
#define FP_TGID    (-40)  /* u32 tgid: the key of the "also" map */
#define FP_ELEM    (-44)  /* u32: the key of a SLOTS array element */

/* Raw tracepoints pass at most this many arguments (MAX_BPF_FUNC_ARGS). */
#define MAX_RAW_ARGS 12

int kbpf_check_event(const struct kvmstat_bpf_event *ev)
{
    if (ev->reason_arg >= MAX_RAW_ARGS)
        return -EINVAL;
    if (ev->reason_offset < 0)
        return 0;
    /* The loads address the record with a 16-bit offset; the verifier
     * itself rejects what lies beyond the record (with a log). */
    if (ev->reason_offset > INT16_MAX || kasm_size_code(ev->reason_size) < 0)
        return -EINVAL;
    return 0;
}

/* r7 = the current process's tgid. */
static void emit_tgid(struct kasm *a)
{
    kasm_call(a, BPF_FUNC_get_current_pid_tgid);       /* r0 = tgid << 32 | tid */
    kasm_alu_imm(a, BPF_RSH, KASM_R0, 32);
    kasm_mov_reg(a, KASM_R7, KASM_R0);
}

/* With only_tgid: jump to the returned label unless the current process
 * (in r7) is only_tgid or in the "also" map.  The watched process itself
 * costs one comparison; the others one lookup in the small map. */
static kasm_label emit_tgid_filter(struct kasm *a, int64_t only_tgid, int also_fd)
{
    kasm_label to_count = kasm_jump_if(a, BPF_JEQ, KASM_R7, (int32_t)only_tgid);
    kasm_store_reg(a, BPF_W, KASM_R10, FP_TGID, KASM_R7);
    kasm_load_map(a, KASM_R1, also_fd);
    kasm_stack_addr(a, KASM_R2, FP_TGID);
    kasm_call(a, BPF_FUNC_map_lookup_elem);
    kasm_label skip = kasm_jump_if(a, BPF_JEQ, KASM_R0, 0);
    kasm_land(a, to_count);
    return skip;
}

/* r8 = the reason, zero-extended from its size: a raw tracepoint's
 * argument (passed as u64, sign-extended when its type is signed) or a
 * field of the trace record. */
static void emit_reason(struct kasm *a, const struct counter_shape *s)
{
    const struct kvmstat_bpf_event *ev = s->ev;

    if (!s->raw) {
        kasm_load(a, kasm_size_code(ev->reason_size), KASM_R8, KASM_R6,
                  (int16_t)ev->reason_offset);
        return;
    }
    kasm_load(a, BPF_DW, KASM_R8, KASM_R6, (int16_t)(8 * ev->reason_arg));
    if (ev->reason_size == 4)
        kasm_zext32(a, KASM_R8);
    else if (ev->reason_size < 4)
        kasm_alu_imm(a, BPF_AND, KASM_R8, (int32_t)((1u << (8 * ev->reason_size)) - 1));
}

/* ------------------------------------------------------------------------
 * SLOTS: one per-CPU array slot per event and reason
 */

/* r8 = the slot of the reason in r8 (see struct event_slots). */
static void emit_reason_slot(struct kasm *a, const struct event_slots *sl)
{
    kasm_label done[KVMSTAT_BPF_MAX_SPARSE + 1];
    unsigned int ndone = 0;

    if (sl->dense) {
        /* Unsigned compare: the verifier then knows r8 < dense. */
        kasm_label not_dense = kasm_jump_if(a, BPF_JGE, KASM_R8, (int32_t)sl->dense);
        kasm_alu_imm(a, BPF_ADD, KASM_R8, (int32_t)sl->base);
        done[ndone++] = kasm_jump(a);
        kasm_land(a, not_dense);
    }
    for (uint32_t k = 0; k < sl->nsparse; k++) {
        kasm_load_imm64(a, KASM_R1, sl->sparse[k]);
        kasm_label other = kasm_jump_if_reg(a, BPF_JNE, KASM_R8, KASM_R1);
        kasm_mov_imm(a, KASM_R8, (int32_t)(sl->base + sl->dense + k));
        done[ndone++] = kasm_jump(a);
        kasm_land(a, other);
    }
    kasm_mov_imm(a, KASM_R8, (int32_t)(sl->base + sl->n - 1));
    for (unsigned int i = 0; i < ndone; i++)
        kasm_land(a, done[i]);
}

/* this CPU's slot += 1 (r8 = the slot when the reason chose it).  Jumps
 * to the returned label when the element is missing (cannot happen). */
static kasm_label emit_slot_increment(struct kasm *a, const struct event_slots *sl,
                                      int counts_fd)
{
    kasm_store_imm(a, BPF_W, KASM_R10, FP_ELEM, (int32_t)sl->elem);
    kasm_load_map(a, KASM_R1, counts_fd);
    kasm_stack_addr(a, KASM_R2, FP_ELEM);
    kasm_call(a, BPF_FUNC_map_lookup_elem);        /* inlined by the kernel */
    kasm_label missing = kasm_jump_if(a, BPF_JEQ, KASM_R0, 0);
    if (sl->with_reason) {
        kasm_alu_imm(a, BPF_LSH, KASM_R8, 3);
        kasm_alu_reg(a, BPF_ADD, KASM_R0, KASM_R8);
        kasm_increment_at(a, KASM_R0, KASM_R1);
    } else {
        int16_t off = (int16_t)(8 * sl->base);
        kasm_load(a, BPF_DW, KASM_R1, KASM_R0, off);
        kasm_alu_imm(a, BPF_ADD, KASM_R1, 1);
        kasm_store_reg(a, BPF_DW, KASM_R0, off, KASM_R1);
    }
    return missing;
}

/* ------------------------------------------------------------------------
 * BY_PROCESS: a per-CPU hash entry per event, process and reason
 */

/* key = { event, tgid (r7), reason (r8) or 0 }. */
static void emit_key(struct kasm *a, const struct counter_shape *s)
{
    kasm_store_imm(a, BPF_W, KASM_R10, FP_KEY_AT(event), (int32_t)s->index);
    kasm_store_reg(a, BPF_W, KASM_R10, FP_KEY_AT(tgid), KASM_R7);
    if (s->with_reason)
        kasm_store_reg(a, BPF_DW, KASM_R10, FP_KEY_AT(reason), KASM_R8);
    else
        kasm_store_imm(a, BPF_DW, KASM_R10, FP_KEY_AT(reason), 0);
}

/* counts[key] += 1, creating the entry; a hit that finds the table full
 * (or no memory) counts in dropped[0].  Every path ends at the returned
 * labels' target. */
static void emit_count(struct kasm *a, const struct count_maps *maps,
                       kasm_label out[3])
{
    kasm_load_map(a, KASM_R1, maps->counts_fd);
    kasm_stack_addr(a, KASM_R2, FP_KEY);
    kasm_call(a, BPF_FUNC_map_lookup_elem);
    kasm_label to_insert = kasm_jump_if(a, BPF_JEQ, KASM_R0, 0);
    kasm_increment_at(a, KASM_R0, KASM_R1);
    out[0] = kasm_jump(a);

    kasm_land(a, to_insert);
    /* BPF_ANY: if another CPU created the entry meanwhile, this only sets
     * this CPU's slot, which was 0. */
    kasm_store_imm(a, BPF_DW, KASM_R10, FP_ONE, 1);
    kasm_load_map(a, KASM_R1, maps->counts_fd);
    kasm_stack_addr(a, KASM_R2, FP_KEY);
    kasm_stack_addr(a, KASM_R3, FP_ONE);
    kasm_mov_imm(a, KASM_R4, BPF_ANY);
    kasm_call(a, BPF_FUNC_map_update_elem);
    out[1] = kasm_jump_if(a, BPF_JEQ, KASM_R0, 0);

    kasm_store_imm(a, BPF_W, KASM_R10, FP_ZERO, 0);
    kasm_load_map(a, KASM_R1, maps->drops_fd);
    kasm_stack_addr(a, KASM_R2, FP_ZERO);
    kasm_call(a, BPF_FUNC_map_lookup_elem);
    out[2] = kasm_jump_if(a, BPF_JEQ, KASM_R0, 0);
    kasm_increment_at(a, KASM_R0, KASM_R1);
}

/*
 * The program of one tracepoint (r1 = its arguments or its record):
 *
 *   if only_tgid given, the tgid differs and is not in the "also" map: return
 *   reason = argument or field (only when a field breaks the event down)
 *   SLOTS:      slots[slot of (event, reason)] += 1
 *   BY_PROCESS: counts[{event, tgid, reason}] += 1, creating the entry;
 *               if the table is full: dropped[0] += 1
 *
 * A perf-attached program is shared by every perf event on its tracepoint:
 * returning 0 would hide the hit from every other perf user of the
 * tracepoint (perf stat, a kvm_stat counting with perf groups), so it
 * returns 1 and perf goes on feeding the events that want it.  A raw
 * tracepoint program's return value means nothing.
 */
static void assemble(struct kasm *a, const struct counter_shape *s,
                     const struct count_maps *maps)
{
    kasm_label out[5];
    unsigned int nout = 0;

    if (s->empty) {
        kasm_return(a, s->raw ? 0 : 1);
        return;
    }
    kasm_mov_reg(a, KASM_R6, KASM_R1);
    if (s->only_tgid >= 0 || !s->slots)
        emit_tgid(a);
    if (s->only_tgid >= 0)
        out[nout++] = emit_tgid_filter(a, s->only_tgid, maps->also_fd);
    if (s->with_reason)
        emit_reason(a, s);
    if (s->slots) {
        if (s->with_reason)
            emit_reason_slot(a, s->slots);
        out[nout++] = emit_slot_increment(a, s->slots, maps->counts_fd);
    } else {
        emit_key(a, s);
        emit_count(a, maps, out + nout);
        nout += 3;
    }
    for (unsigned int i = 0; i < nout; i++)
        kasm_land(a, out[i]);
    kasm_return(a, s->raw ? 0 : 1);
}

int kbpf_load_counter(const struct counter_shape *shape, const struct count_maps *maps,
                      char *log, unsigned int log_size)
{
    struct kasm a;
    char name[32];

    kasm_init(&a);
    assemble(&a, shape, maps);
    /* The kernel keeps the first BPF_OBJ_NAME_LEN - 1 characters. */
    snprintf(name, sizeof(name), "kvmstat_%u", shape->index);
    int rc = kasm_error(&a);
    if (rc == 0)
        rc = ksys_prog_load(shape->raw ? BPF_PROG_TYPE_RAW_TRACEPOINT : BPF_PROG_TYPE_TRACEPOINT,
                            0, a.insn, a.n, name, log, log_size);
    kasm_release(&a);
    return rc;
}
