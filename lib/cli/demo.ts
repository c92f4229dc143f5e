// `blockwal demo`: a guided tour on loopback, in a temporary directory. A
// primary and two replicas run as real `blockwal serve` processes of this
// very command; a filesystem-like workload goes through NBD to the primary;
// replica r1 is killed (SIGKILL) and comes back (WAL catch-up), replica r2 is
// wiped and comes back empty (rebuild); at the end every node is stopped and
// `blockwal checksum` of the three directories must be equal (and equal to
// what the workload wrote), or the demo fails with exit status 1.
//
// The narrative goes to stdout: what each step does, what happened (from the
// primary's status), progress lines for catch-up and rebuild, and where to
// look next. Node logs go to DIR/logs/NAME.log.
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { type Command, parse, UsageError } from './args';
import { DemoNode } from './demo_nodes';
import { runTour, type Tour } from './demo_tour';

const USAGE = `usage: blockwal demo [--keep] [--seed N]

A guided tour on loopback in a temporary directory: a primary and two
replicas (three \`blockwal serve\` processes), a filesystem-like workload
through NBD, one replica killed and brought back (WAL catch-up), one wiped
(rebuild), and equal checksums of the three volumes at the end. Takes about
20 seconds; exit status 1 if any step fails or the checksums differ.
  --keep     keep the temporary directory (volumes and node logs) and print where it is
  --seed N   replay the workload of an earlier run (the seed is printed)`;

export const demo: Command = {
  usage: USAGE,
  async run(args) {
    const { values } = parse(args, { keep: { type: 'boolean' }, seed: { type: 'string' } }, { min: 0, max: 0, names: '' });
    if (values.help === true) {
      process.stdout.write(USAGE + '\n');
      return 0;
    }
    const seed = values.seed === undefined ? crypto.randomInt(2 ** 31) : parseSeed(values.seed);
    const root = fs.mkdtempSync(path.join(os.tmpdir(), 'blockwal-demo-'));
    fs.mkdirSync(path.join(root, 'logs'));
    const node = (name: string): DemoNode => new DemoNode(name, root, name);
    const tour: Tour = { root, seed, p: node('p'), r1: node('r1'), r2: node('r2') };
    let passed = false;
    try {
      await runTour(tour);
      passed = true;
      return 0;
    } finally {
      for (const n of [tour.p, tour.r1, tour.r2]) await n.kill('SIGKILL');
      if (values.keep === true || !passed) {
        process.stdout.write(`kept ${root}: volumes p, r1, r2 and node logs in logs/ (replay the workload with --seed ${seed})\n`);
      } else {
        fs.rmSync(root, { recursive: true, force: true });
      }
    }
  },
};

function parseSeed(text: string): number {
  const n = /^\d+$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(n) || n >= 2 ** 32) throw new UsageError(`--seed: '${text}' is not a whole number below 2^32`);
  return n;
}
