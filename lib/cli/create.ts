// `blockwal create DIR --size SIZE`: makes a new volume directory.
import { Volume } from '../engine/volume';
import { type Command, formatBytes, parse, parseSize, stderrLogger, UsageError } from './args';

export const create: Command = {
  usage: `usage: blockwal create DIR --size SIZE [--wal-segment-size SIZE] [--wal-retention SIZE]

Makes a new volume in DIR (missing or empty): a superblock, a sparse base.img
and a WAL. Sizes take bytes or K/M/G/T suffixes (binary).
  --size SIZE              the volume's size, a multiple of 4 KiB (e.g. 64G)
  --wal-segment-size SIZE  bytes per WAL segment file (default 64M)
  --wal-retention SIZE     WAL kept after checkpoints for replica catch-up (default 0)`,

  async run(args) {
    const { values, positionals } = parse(
      args,
      { size: { type: 'string' }, 'wal-segment-size': { type: 'string' }, 'wal-retention': { type: 'string' } },
      { min: 1, max: 1, names: 'DIR' },
    );
    if (values.help === true) return help(this.usage);
    if (values.size === undefined) throw new UsageError('--size is required');
    const sizeBytes = parseSize(values.size, '--size');
    if (sizeBytes % 4096 !== 0) throw new UsageError(`--size: ${sizeBytes} bytes is not a multiple of 4096`);
    const dir = positionals[0]!;
    const vol = await Volume.create(dir, {
      sizeBytes,
      walSegmentBytes: values['wal-segment-size'] === undefined ? undefined : parseSize(values['wal-segment-size'], '--wal-segment-size'),
      walRetentionBytes: values['wal-retention'] === undefined ? undefined : parseSize(values['wal-retention'], '--wal-retention'),
      logger: stderrLogger('warn'),
      flushIdleMs: 0,
    }).catch((err: unknown) => {
      // Option values the engine refuses (sizes out of bounds) are bad usage.
      throw err instanceof RangeError ? new UsageError(err.message) : err;
    });
    const s = vol.status();
    await vol.close();
    process.stdout.write(`created ${dir}: ${formatBytes(s.sizeBytes)} volume ${s.uuid}\n`);
    return 0;
  },
};

export function help(usage: string): number {
  process.stdout.write(usage + '\n');
  return 0;
}
