// Kill -9 of a real process under load, then recovery, many times over one
// volume. Each cycle spawns test/support/crash_child.js, which opens the
// volume and runs a seeded random workload (writes at block and sector
// offsets, trims, write-zeroes, flushes, FUA) while streaming each intention
// and acknowledgement to us; we SIGKILL it after a seeded delay (most cycles
// 5-80 ms after it is open, some later so the WAL wraps and the flusher
// checkpoints, and some 0-40 ms after it starts to open, so recovery itself
// is killed: then the volume is not verified between the two kills, and that
// child replays the log of the crash before), reopen the volume here and check rule R-sector of crash_verify.ts on every sector
// the cycle touched plus a rotating sixteenth of the volume (and the whole
// volume at the end): every durably acknowledged write reads back, and every
// sector holds a version that was really issued to it, whole.
//
// Seeded: BLOCKWAL_CRASH_SEED replays the workloads and kill delays (the
// moments they land on depend on timing, so a replay is close, not exact).
// BLOCKWAL_CRASH_CYCLES changes the cycle count (default 200).
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as path from 'node:path';

import { Volume } from '../../lib/engine/volume';
import {
  BLOCK_BYTES, CRASH_ARENA_BYTES, CRASH_VOLUME_BYTES, CRASH_WAL_SEGMENTS_MAX, CrashModel, type CycleReport, SECTOR_BYTES, SECTOR_MISPLACED, SECTOR_TORN,
  addReports, decodeSector, writeContent, zeroReport,
} from '../support/crash_verify';
import { prng, tempDir } from '../support/tmp';

const CHILD_JS = path.join(__dirname, '..', 'support', 'crash_child.js');
const CYCLES_DEFAULT = 200;
const SCAN_STRIPES = 16;
const READY_TIMEOUT_MS = 30_000;
// A reopen or verification that takes longer has hung (a promise that never
// settles would otherwise let the event loop run dry and end the test with
// no word of where).
const VERIFY_TIMEOUT_MS = 15_000;

interface ChildOutcome {
  killed: boolean;
  killedInRecovery: boolean; // after it began to open, before it was ready
  lifeMs: number;
}

interface KillPlan {
  inRecovery: boolean; // the delay counts from 'O' (opening), else from 'R' (ready)
  delayMs: number;
}

function planKill(rand: () => number, cycle: number): KillPlan {
  const r = rand();
  if (cycle > 0 && r < 0.15) return { inRecovery: true, delayMs: rand() * 40 }; // an open takes ~30-60 ms here
  if (r < 0.25) return { inRecovery: false, delayMs: 80 + rand() * 170 }; // long enough for the WAL to wrap
  return { inRecovery: false, delayMs: 5 + rand() * 75 };
}

// Runs one child to its SIGKILL, feeding its lines to the model.
function runChild(dir: string, seed: number, cycle: number, model: CrashModel, plan: KillPlan): Promise<ChildOutcome> {
  return new Promise((resolve, reject) => {
    const startMs = performance.now();
    const child = spawn(process.execPath, [CHILD_JS, dir, String(seed), String(cycle), String(model.nextId)], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let pending = '';
    let stderr = '';
    let protocolError: Error | undefined;
    let killTimer: NodeJS.Timeout | undefined;
    let readyAtMs: number | undefined;
    const kill = (): void => void child.kill('SIGKILL');
    const armKill = (): void => void (killTimer = setTimeout(kill, plan.delayMs));
    const readyTimer = setTimeout(() => {
      protocolError ??= new Error(`child of cycle ${cycle} not ready after ${READY_TIMEOUT_MS} ms`);
      kill();
    }, READY_TIMEOUT_MS);
    child.stdout.setEncoding('latin1');
    child.stdout.on('data', (chunk: string) => {
      const lines = (pending + chunk).split('\n');
      pending = lines.pop()!;
      for (const line of lines) {
        try {
          model.ingest(line);
        } catch (err) {
          protocolError ??= err as Error;
          kill();
        }
        if (line === 'O' && plan.inRecovery) armKill();
        if (line === 'R') {
          readyAtMs = performance.now();
          clearTimeout(readyTimer);
          if (!plan.inRecovery) armKill();
        }
      }
    });
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk: string) => void (stderr += chunk));
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(readyTimer);
      clearTimeout(killTimer);
      if (protocolError !== undefined) return reject(protocolError);
      const killed = signal === 'SIGKILL';
      // A line cut by the kill was never acted on by the child: drop it.
      if (pending !== '' && !killed) return reject(new Error(`cycle ${cycle}: child output ends mid-line: "${pending}"`));
      if (!killed && !(code === 0 && model.closedCleanly)) {
        return reject(new Error(`cycle ${cycle}: child exited with ${signal ?? `code ${code}`}: ${stderr.trim() || '(no stderr)'}`));
      }
      resolve({ killed, killedInRecovery: killed && model.opening && readyAtMs === undefined, lifeMs: performance.now() - startMs });
    });
  });
}

function scanStripe(cycle: number, sectors: number): Array<[number, number]> {
  const stripe = sectors / SCAN_STRIPES;
  const first = (cycle % SCAN_STRIPES) * stripe;
  return [[first, first + stripe]];
}

const VERBOSE = process.env.BLOCKWAL_CRASH_VERBOSE === '1';

function trace(message: string): void {
  if (VERBOSE) console.log(`crash_kill: ${message}`);
}

function withTimeout<T>(promise: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not settle within ${VERIFY_TIMEOUT_MS} ms`)), VERIFY_TIMEOUT_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

async function openAndVerify(dir: string, model: CrashModel, ranges: ReadonlyArray<readonly [number, number]>): Promise<CycleReport> {
  trace('open');
  const vol = await withTimeout(Volume.open(dir, { walSegmentsMax: CRASH_WAL_SEGMENTS_MAX, arenaBytes: CRASH_ARENA_BYTES }), 'Volume.open (recovery)');
  let ok = false;
  try {
    trace(`opened: ${JSON.stringify(vol.status())}`);
    const report = await withTimeout(model.verify((offsetBytes, lengthBytes) => vol.read(offsetBytes, lengthBytes), ranges), 'reading back');
    ok = true;
    return report;
  } finally {
    trace('close');
    // After a failure the close may hang too: do not wait for it, the error says more.
    if (ok) await withTimeout(vol.close(), 'Volume.close');
    else void vol.close().catch(() => undefined);
    trace('closed');
  }
}

function envInt(name: string): number | undefined {
  const v = process.env[name];
  if (v === undefined || v === '') return undefined;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`${name} must be a non-negative integer`);
  return n;
}

function anomalyCount(r: CycleReport): number {
  return r.lostSectors + r.phantomSectors + r.tornSectors;
}

test('SIGKILL under load: every durable write reads back, no torn or phantom sector', async () => {
  const seed = envInt('BLOCKWAL_CRASH_SEED') ?? Math.floor(Math.random() * 2 ** 31);
  const cycles = envInt('BLOCKWAL_CRASH_CYCLES') ?? CYCLES_DEFAULT;
  console.log(`crash_kill: seed ${seed} (replay: BLOCKWAL_CRASH_SEED=${seed}), ${cycles} cycles`);
  const { dir, cleanup } = tempDir('crash-kill');
  const model = new CrashModel(CRASH_VOLUME_BYTES);
  const rand = prng(seed);
  const total = zeroReport();
  const failedCycles: number[] = [];
  let killsInRecovery = 0;
  let verifications = 0;
  let childMs = 0;
  let verifyMs = 0;
  const startMs = performance.now();
  let cycle = 0;
  let passed = false;
  try {
    let plan = planKill(rand, 0);
    let verified = true;
    for (; cycle < cycles; cycle++) {
      if (verified) model.beginCycle();
      else model.nextChild();
      const outcome = await runChild(dir, Math.floor(rand() * 2 ** 31), cycle, model, plan);
      trace(`cycle ${cycle}: child ${outcome.killed ? 'killed' : 'closed'} after ${outcome.lifeMs.toFixed(0)} ms`);
      if (outcome.killedInRecovery) killsInRecovery++;
      childMs += outcome.lifeMs;
      plan = planKill(rand, cycle + 1);
      // When the next child is to be killed in its recovery, it recovers this
      // crash's log: verify after it instead.
      verified = !(plan.inRecovery && cycle + 1 < cycles);
      if (!verified) continue;
      verifications++;
      const verifyStartMs = performance.now();
      const report = await openAndVerify(dir, model, model.rangesToVerify(scanStripe(cycle, model.sectors)));
      verifyMs += performance.now() - verifyStartMs;
      addReports(total, report);
      if (anomalyCount(report) > 0) failedCycles.push(cycle);
    }
    model.beginCycle();
    const final = await openAndVerify(dir, model, [[0, model.sectors]]);
    addReports(total, final);
    passed = failedCycles.length === 0;
  } catch (err) {
    (err as Error).message = `cycle ${cycle} (seed ${seed}; volume kept in ${dir}): ${(err as Error).message}`;
    throw err;
  } finally {
    if (passed) cleanup();
    else console.log(`crash_kill: volume kept for inspection in ${dir}`);
    printSummary();
  }
  assert.deepEqual(failedCycles, [], `anomalies in cycles ${failedCycles.join(',')} (seed ${seed}); first: ${total.anomalies[0] ?? ''}`);
  assert.equal(total.lostOps, 0);
  assert.ok(total.durableOpsChecked > 0 && total.opsDurable > 0, 'durable writes were checked');

  function printSummary(): void {
    const seconds = (performance.now() - startMs) / 1000;
    console.log(
      `crash_kill: ops ${total.opsIssued} issued, ${total.opsAcked} acked, ${total.opsDurable} durable ` +
        `(${total.flushesResolved} flushes); ${killsInRecovery} kills during open/recovery; ${verifications} verifications; ` +
        `acked-not-durable missing after kill ${total.ackedOnlyMissing}, unacked that landed ${total.inFlightLanded}; ` +
        `${total.sectorsVerified} sector reads, ${total.durableSectorsChecked} durable sectors checked; ` +
        `${seconds.toFixed(1)} s (children ${(childMs / 1000).toFixed(1)} s, reopen+verify ${(verifyMs / 1000).toFixed(1)} s)`,
    );
    console.log(
      `crash_kill: ${cycle === cycles ? cycles : `${cycle} of ${cycles}`} cycles, ${total.durableOpsChecked} durable writes checked, ${total.lostOps} losses ` +
        `(${total.lostSectors} sectors), ${total.phantomSectors + total.tornSectors} phantom/torn sectors ` +
        `(${total.phantomSectors} phantom, ${total.tornSectors} torn), seed ${seed}`,
    );
    for (const a of total.anomalies) console.log(`crash_kill: ${a}`);
  }
});

// ---- the checker can fail -------------------------------------------------

test('the checker catches a durable write the volume never got (planted in the model, real volume)', async () => {
  const { dir, cleanup } = tempDir('crash-plant');
  const model = new CrashModel(CRASH_VOLUME_BYTES);
  const rand = prng(7);
  try {
    for (let cycle = 0; cycle < 3; cycle++) {
      model.beginCycle();
      await runChild(dir, Math.floor(rand() * 2 ** 31), cycle, model, { inRecovery: false, delayMs: 40 });
      const report = await openAndVerify(dir, model, model.rangesToVerify([]));
      assert.equal(anomalyCount(report), 0, report.anomalies.join('\n'));
    }
    model.beginCycle();
    const plantedSector = 1000 * (BLOCK_BYTES / SECTOR_BYTES) + 3; // a sub-block range, 9 sectors
    model.plantDurableWrite(plantedSector, 9);
    const report = await openAndVerify(dir, model, [[0, model.sectors]]);
    assert.equal(report.lostSectors, 9, report.anomalies.join('\n'));
    assert.equal(report.lostOps, 1);
    assert.equal(report.phantomSectors + report.tornSectors, 0);
    assert.match(report.anomalies[0]!, /lost \(older version/);
  } finally {
    cleanup();
  }
});

// An in-memory image standing in for a volume's content, to plant damage.
function imageWith(sectors: number): { image: Buffer; read: (o: number, l: number) => Promise<Uint8Array> } {
  const image = Buffer.alloc(sectors * SECTOR_BYTES);
  return { image, read: async (o, l) => image.subarray(o, o + l) };
}

test('the checker tells torn, misplaced, phantom and lost sectors apart, and allows non-durable losses', async () => {
  const sectors = 4096;
  const { image, read } = imageWith(sectors);
  const model = new CrashModel(sectors * SECTOR_BYTES);
  model.beginCycle();
  // op 1: durable (FUA) at sectors 0..7; op 2 at 24..31, durable by flush 1; op 3: acked only
  // at 8..15; op 4 in flight at 16..23; op 5 (acked only) overwrites 24..27.
  const lines = ['R', 'W 1 0 8 1', 'A 1', 'W 2 24 8 0', 'A 2', 'F 1', 'G 1', 'W 3 8 8 0', 'A 3', 'W 4 16 8 0', 'W 5 24 4 0', 'A 5'];
  for (const l of lines) model.ingest(l);
  // Read back: op 1; op 3 lost (allowed: not durable); op 4 landed; op 2 kept where op 5 is lost (allowed).
  writeContent(1, 0, 8).copy(image, 0);
  writeContent(4, 16, 8).copy(image, 16 * SECTOR_BYTES);
  writeContent(2, 24, 8).copy(image, 24 * SECTOR_BYTES);
  const clean = await model.verify(read, [[0, 64]]);
  assert.deepEqual(clean.anomalies, []);
  assert.equal(clean.durableOpsChecked, 2);
  assert.equal(clean.ackedOnlyMissing, 2);
  assert.equal(clean.inFlightLanded, 1);

  // Next cycle: damage what was read back.
  model.beginCycle();
  for (const l of ['R', 'W 6 100 8 1', 'A 6']) model.ingest(l);
  writeContent(6, 100, 8).copy(image, 100 * SECTOR_BYTES);
  writeContent(1, 0, 1).copy(image, 1 * SECTOR_BYTES); // sector 1 holds sector 0's bytes: misplaced
  writeContent(2, 24, 1).copy(image, 2 * SECTOR_BYTES, 0, 256); // sector 2: half op 2, half op 1: torn
  image.fill(0, 3 * SECTOR_BYTES, 4 * SECTOR_BYTES); // sector 3: zeros, op 1 rolled back: lost
  image.fill(0, 103 * SECTOR_BYTES, 104 * SECTOR_BYTES); // sector 103: op 6 lost
  writeContent(99, 105, 1).copy(image, 105 * SECTOR_BYTES); // sector 105: a version never issued
  const bad = await model.verify(read, [[0, 128]]);
  assert.equal(bad.tornSectors, 1, bad.anomalies.join('\n'));
  assert.equal(bad.phantomSectors, 2, bad.anomalies.join('\n'));
  assert.equal(bad.lostSectors, 2, bad.anomalies.join('\n'));
  assert.equal(bad.lostOps, 2); // op 6 and the baseline (op 1's sector)

  // The decoder itself, on one sector.
  const scratch = new Uint32Array(SECTOR_BYTES / 4);
  const one = writeContent(42, 7, 1);
  const words = new Uint32Array(one.buffer, one.byteOffset, SECTOR_BYTES / 4);
  assert.equal(decodeSector(words, 0, 7, scratch), 42);
  assert.equal(decodeSector(words, 0, 8, scratch), SECTOR_MISPLACED);
  one[300] = one[300]! ^ 1;
  assert.equal(decodeSector(words, 0, 7, scratch), SECTOR_TORN);
});

test('the model refuses a child that breaks the protocol (overlap in flight)', () => {
  const model = new CrashModel(1 << 20);
  model.beginCycle();
  model.ingest('W 1 0 8 0');
  assert.throws(() => model.ingest('W 2 7 2 0'), /overlaps an op in flight/);
});
