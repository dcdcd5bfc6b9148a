/**
 * The seq a new checkpoint states it covers (its maxSeq): every event up to it is in the heads
 * it records. `settled`: settledAuditSeq's answer before the checkpoint's transaction (null:
 * not settled). `lastSettled`: the last checkpoint's maxSeq when it is a settled one (format
 * 2), else '0'. While events are being sealed, '0': sealing moves heads without new seqs, so
 * the next checkpoint must compare every head.
 *
 * Never below the last one's (covered by induction: heads are copied only forward). A checkpoint
 * settles its seq before it waits for the checkpoints' lock, so another instance's checkpoint
 * may have settled a later one meanwhile; stated as it was, the checkpoint's maxSeq went
 * backwards (until 0.26.0), and with it the verifier's check of seqs against the checkpoint.
 */
export function checkpointMaxSeq(sealing: boolean, settled: string | null, lastSettled: string): string {
  if (sealing) return '0';
  return settled !== null && BigInt(settled) > BigInt(lastSettled) ? settled : lastSettled;
}
