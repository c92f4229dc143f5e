// `blockwal export DIR FILE` and `blockwal checksum DIR`: offline reads of a
// volume's logical content (the volume must not be served meanwhile).
import { Volume } from '../engine/volume';
import { checksumVolume, exportVolume } from '../node/content';
import { type Command, parse, progressPrinter, stderrLogger } from './args';
import { help } from './create';

async function withVolume<T>(dir: string, fn: (vol: Volume) => Promise<T>): Promise<T> {
  const vol = await Volume.open(dir, { flushIdleMs: 0, logger: stderrLogger('warn') });
  try {
    return await fn(vol);
  } finally {
    await vol.close();
  }
}

export const exportCommand: Command = {
  usage: `usage: blockwal export DIR FILE

Writes the volume's logical content to FILE as a raw image of the volume's
size (holes stay sparse), then fsyncs it. Progress on stderr.`,

  async run(args) {
    const { values, positionals } = parse(args, {}, { min: 2, max: 2, names: 'DIR and FILE' });
    if (values.help === true) return help(this.usage);
    const [dir, file] = positionals as [string, string];
    await withVolume(dir, (vol) => exportVolume(vol, file, progressPrinter(`export ${dir}`)));
    process.stdout.write(`exported ${dir} to ${file}\n`);
    return 0;
  },
};

export const checksum: Command = {
  usage: `usage: blockwal checksum DIR

Prints the XXH3-64 of the volume's logical content in hex: equal on every
node holding the same data, whatever is still in its WAL.`,

  async run(args) {
    const { values, positionals } = parse(args, {}, { min: 1, max: 1, names: 'DIR' });
    if (values.help === true) return help(this.usage);
    const dir = positionals[0]!;
    const sum = await withVolume(dir, (vol) => checksumVolume(vol, progressPrinter(`checksum ${dir}`)));
    process.stdout.write(`${sum}\n`);
    return 0;
  },
};
