/*
 * The BPF engine's counting program: one per tracepoint, assembled with
 * kvmstat_bpf_asm.h.
 */
#include "kvmstat_bpf_engine.h"
#include "kvmstat_bpf_asm.h"
#include "kvmstat_sys.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>

/* Stack slots of the program (offsets from the frame pointer r10). */
#define FP_KEY     (-16)  /* struct count_key */
#define FP_KEY_AT(member) ((int16_t)(FP_KEY + (int)offsetof(struct count_key, member)))
#define FP_ONE     (-24)  /* u64 1: the value of a new entry */
#define FP_ZERO    (-32)  /* u32 0: the key of the dropped counter */
#define FP_TGID    (-40)  /* u32 tgid: the key of the "also" map */

int kbpf_check_event(const struct kvmstat_bpf_event *ev)
{
    if (ev->reason_offset < 0)
        return 0;
    /* The loads address the record with a 16-bit offset; the verifier
     * itself rejects what lies beyond the record (with a log). */
    if (ev->reason_offset > INT16_MAX || kasm_size_code(ev->reason_size) < 0)
        return -EINVAL;
    return 0;
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

/* key = { event, tgid (r7), reason field of the record (r6) or 0 }. */
static void emit_key(struct kasm *a, uint32_t index, const struct kvmstat_bpf_event *ev)
{
    kasm_store_imm(a, BPF_W, KASM_R10, FP_KEY_AT(event), (int32_t)index);
    kasm_store_reg(a, BPF_W, KASM_R10, FP_KEY_AT(tgid), KASM_R7);
    if (ev->reason_offset >= 0) {
        kasm_load(a, kasm_size_code(ev->reason_size), KASM_R1, KASM_R6,
                  (int16_t)ev->reason_offset);
        kasm_store_reg(a, BPF_DW, KASM_R10, FP_KEY_AT(reason), KASM_R1);
    } else {
        kasm_store_imm(a, BPF_DW, KASM_R10, FP_KEY_AT(reason), 0);
    }
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
static void assemble(struct kasm *a, uint32_t index, const struct kvmstat_bpf_event *ev,
                     int64_t only_tgid, const struct count_maps *maps)
{
    kasm_label out[4];
    unsigned int nout = 0;

    kasm_mov_reg(a, KASM_R6, KASM_R1);                 /* keep the record */
    kasm_call(a, BPF_FUNC_get_current_pid_tgid);       /* r0 = tgid << 32 | tid */
    kasm_alu_imm(a, BPF_RSH, KASM_R0, 32);
    kasm_mov_reg(a, KASM_R7, KASM_R0);                 /* r7 = tgid (kept by calls) */
    if (only_tgid >= 0)
        out[nout++] = emit_tgid_filter(a, only_tgid, maps->also_fd);
    emit_key(a, index, ev);
    emit_count(a, maps, out + nout);
    nout += 3;
    for (unsigned int i = 0; i < nout; i++)
        kasm_land(a, out[i]);
    kasm_return(a, 1);  /* see above: let other perf users see the hit */
}

int kbpf_load_counter(uint32_t index, const struct kvmstat_bpf_event *ev,
                      int64_t only_tgid, const struct count_maps *maps,
                      char *log, unsigned int log_size)
{
    struct kasm a;
    char name[32];

    kasm_init(&a);
    assemble(&a, index, ev, only_tgid, maps);
    /* The kernel keeps the first BPF_OBJ_NAME_LEN - 1 characters. */
    snprintf(name, sizeof(name), "kvmstat_%u", index);
    int rc = kasm_error(&a);
    if (rc == 0)
        rc = ksys_prog_load(BPF_PROG_TYPE_TRACEPOINT, 0, a.insn, a.n, name, log, log_size);
    kasm_release(&a);
    return rc;
}
