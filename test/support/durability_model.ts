// A disk model for checking a ring trace: which WAL groups are written and
// which are durable, by the strict rules (a RWF_DSYNC write is durable when it
// completes; an fdatasync makes durable the writes of its file that completed
// before it was submitted; nothing else). Every "written up to L" and "durable
// up to L" event the WAL emitted is checked against the model at that moment.
import { OpKind, OpPurpose, type TraceEvent } from '../../lib/native/ring';

const RWF_DSYNC = 2;
const WAL_TRACE_WRITTEN = 1;
const WAL_TRACE_DURABLE = 2;

interface GroupModel {
  fd: number;
  offsetBytes: number;
  lsnFirst: number;
  lsnLast: number;
  dsync: boolean;
  completedSeq: number | undefined;
  ok: boolean;
  durable: boolean;
}

export interface ModelReport {
  groups: number;
  syncs: number;
  writtenEvents: number;
  durableEvents: number;
  lsnDurableMax: number;
  violations: string[];
}

export function checkWalTrace(trace: readonly TraceEvent[]): ModelReport {
  const groups: GroupModel[] = [];
  const inFlightSyncs = new Map<number, { fd: number; submittedSeq: number }>(); // by ring slot
  const inFlightGroups = new Map<number, GroupModel>(); // by ring slot
  const report: ModelReport = { groups: 0, syncs: 0, writtenEvents: 0, durableEvents: 0, lsnDurableMax: 0, violations: [] };

  const allSatisfy = (lsn: number, pred: (g: GroupModel) => boolean): number | undefined => {
    // Returns an LSN <= lsn not covered by a group satisfying pred.
    for (let l = 1; l <= lsn; ) {
      const g = groups.find((x) => x.lsnFirst <= l && l <= x.lsnLast);
      if (g === undefined || !pred(g)) return l;
      l = g.lsnLast + 1;
    }
    return undefined;
  };

  for (const e of trace) {
    if (e.type === 'submit' && e.purpose === OpPurpose.walGroup && e.kind === OpKind.write) {
      const g: GroupModel = {
        fd: e.fd,
        offsetBytes: e.offsetBytes,
        lsnFirst: e.a,
        lsnLast: e.b,
        dsync: (e.flags & RWF_DSYNC) !== 0,
        completedSeq: undefined,
        ok: false,
        durable: false,
      };
      groups.push(g);
      inFlightGroups.set(e.slot, g);
      report.groups++;
    } else if (e.type === 'complete' && e.purpose === OpPurpose.walGroup) {
      const g = inFlightGroups.get(e.slot);
      inFlightGroups.delete(e.slot);
      if (g === undefined || g.fd !== e.fd || g.offsetBytes !== e.offsetBytes) {
        report.violations.push(`completion of an unknown group at fd ${e.fd} offset ${e.offsetBytes}`);
        continue;
      }
      g.completedSeq = e.seq;
      g.ok = e.result === e.lengthBytes;
      if (g.ok && g.dsync) g.durable = true;
    } else if (e.type === 'submit' && e.purpose === OpPurpose.walSync) {
      inFlightSyncs.set(e.slot, { fd: e.fd, submittedSeq: e.seq });
      report.syncs++;
    } else if (e.type === 'complete' && e.purpose === OpPurpose.walSync) {
      const sync = inFlightSyncs.get(e.slot);
      inFlightSyncs.delete(e.slot);
      if (sync === undefined || sync.fd !== e.fd) {
        report.violations.push(`completion of an unknown sync on fd ${e.fd}`);
        continue;
      }
      if (e.result < 0) continue;
      for (const g of groups) {
        if (g.fd === sync.fd && g.ok && g.completedSeq !== undefined && g.completedSeq < sync.submittedSeq) g.durable = true;
      }
    } else if (e.type === 'event' && e.kind === WAL_TRACE_WRITTEN) {
      report.writtenEvents++;
      const missing = allSatisfy(e.a, (g) => g.ok);
      if (missing !== undefined) report.violations.push(`written ${e.a} reported at #${e.seq} but LSN ${missing} is not written`);
    } else if (e.type === 'event' && e.kind === WAL_TRACE_DURABLE) {
      report.durableEvents++;
      report.lsnDurableMax = Math.max(report.lsnDurableMax, e.a);
      const missing = allSatisfy(e.a, (g) => g.durable);
      if (missing !== undefined) report.violations.push(`durable ${e.a} reported at #${e.seq} but LSN ${missing} is not durable`);
    }
  }
  return report;
}
