// `blockwal demo`: a short tour on a temporary directory. It creates a volume,
// serves it over NBD on a Unix socket from this process (a StorageNode), and
// drives real NBD clients at it: nbdinfo for the export's description,
// nbdcopy to copy an image in and back out, nbdinfo --map after a trim. Then
// it shows the node's status and a restart with recovery.
import { execFile, spawnSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { Volume } from '../engine/volume';
import { StorageNode } from '../node/storage_node';
import { type Command, formatBytes, parse, stderrLogger } from './args';

const USAGE = `usage: blockwal demo [--keep]

A short tour in a temporary directory: a volume served over NBD on a Unix
socket, real NBD clients (nbdinfo, nbdcopy) writing, reading and mapping it,
the node's status, and a restart with recovery.
  --keep   keep the temporary directory and print where it is`;

const MiB = 1 << 20;
const IMAGE_BYTES = 32 * MiB;

export const demo: Command = {
  usage: USAGE,
  async run(args) {
    const { values } = parse(args, { keep: { type: 'boolean' } }, { min: 0, max: 0, names: '' });
    if (values.help === true) {
      process.stdout.write(USAGE + '\n');
      return 0;
    }
    const missing = ['nbdinfo', 'nbdcopy'].filter((tool) => spawnSync(tool, ['--version']).error !== undefined);
    if (missing.length > 0) throw new Error(`missing ${missing.join(', ')}: run scripts/setup.sh (Debian package libnbd-bin)`);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blockwal-demo-'));
    try {
      await tour(dir);
      return 0;
    } finally {
      if (values.keep === true) say(`kept ${dir}`);
      else fs.rmSync(dir, { recursive: true, force: true });
    }
  },
};

function say(line: string): void {
  process.stdout.write(line + '\n');
}

// Runs a client to completion, printing its command line; throws on failure.
// Asynchronous: the server it talks to runs on this process's event loop.
function client(tool: string, args: string[]): Promise<string> {
  say(`  $ ${tool} ${args.join(' ')}`);
  return new Promise((resolve, reject) => {
    execFile(tool, args, { encoding: 'utf8', maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err === null) resolve(stdout);
      else reject(new Error(`${tool} failed (${err.code ?? err.signal}): ${stderr.trim().split('\n')[0]}`));
    });
  });
}

async function tour(dir: string): Promise<void> {
  const volDir = path.join(dir, 'vol');
  const socket = path.join(dir, 'nbd.sock');
  const uri = `nbd+unix:///demo?socket=${socket}`;
  say(`blockwal demo in ${dir}`);
  const created = await Volume.create(volDir, { sizeBytes: 256 * MiB, walSegmentBytes: 16 * MiB });
  await created.close();
  say(`1. created a 256 MiB volume in ${volDir}: ${fs.readdirSync(volDir).join(', ')}`);

  let node = new StorageNode({ nodeId: 'demo', logger: stderrLogger('warn') });
  await node.openVolume(volDir, { exportName: 'demo' });
  await node.listenNbd({ path: socket });
  say(`2. serving it over NBD at ${uri}`);
  const info = JSON.parse(await client('nbdinfo', ['--json', uri])) as { exports: Record<string, unknown>[] };
  const e = info.exports[0]!;
  say(`   nbdinfo: ${formatBytes(Number(e['export-size']))}, block sizes ${e['block_size_minimum']}/${e['block_size_preferred']}/${formatBytes(Number(e['block_size_maximum']))}, multi-conn ${e['can_multi_conn']}, fua ${e['can_fua']}, trim ${e['can_trim']}`);

  const image = path.join(dir, 'image.raw');
  fs.writeFileSync(image, crypto.randomBytes(IMAGE_BYTES));
  let started = performance.now();
  await client('nbdcopy', ['--flush', image, uri]);
  say(`3. nbdcopy wrote a ${formatBytes(IMAGE_BYTES)} random image (with a flush) in ${(performance.now() - started).toFixed(0)} ms`);
  const back = path.join(dir, 'back.raw');
  started = performance.now();
  await client('nbdcopy', [uri, back]);
  const same = fs.readFileSync(back).subarray(0, IMAGE_BYTES).equals(fs.readFileSync(image));
  say(`   and read the volume back out in ${(performance.now() - started).toFixed(0)} ms: first ${formatBytes(IMAGE_BYTES)} ${same ? 'equal' : 'DIFFERENT'}`);
  if (!same) throw new Error('the image read back differs from the image written');

  await node.volume('demo')!.trim(8 * MiB, 8 * MiB);
  say('4. trimmed 8 MiB at offset 8 MiB; the allocation map now shows it as a hole:');
  for (const line of (await client('nbdinfo', ['--map', uri])).trim().split('\n')) say(`     ${line.trim()}`);

  const s = node.status().volumes[0]!;
  say(`5. status: head LSN ${s.lsnHead}, durable ${s.lsnDurable}, checkpoint ${s.checkpointLsn}, ${formatBytes(s.dirtyBytes)} dirty, WAL ${s.walSegments}/${s.walSegmentsMax} segments`);
  await node.close();
  node = new StorageNode({ nodeId: 'demo', logger: stderrLogger('warn') });
  const reopened = await node.openVolume(volDir, { exportName: 'demo' });
  const first = await reopened.read(0, 4096);
  say(`6. stopped and reopened (recovery from checkpoint LSN ${reopened.status().checkpointLsn}): block 0 ${first.equals(fs.readFileSync(image).subarray(0, 4096)) ? 'intact' : 'DIFFERENT'}`);
  await node.close();
  say('next: `blockwal create DIR --size 8G` and `blockwal serve DIR` to serve your own volume (README: mounting a');
  say('      filesystem through nbdfuse); `npm test` runs the suite; `npm run bench` measures against fio and nbdkit');
}
