// Shared argument handling for the subcommands: flag parsing (node's
// parseArgs, strict), sizes with binary suffixes, addresses, usage errors
// (exit 2) and the pino logger on stderr.
import { parseArgs, type ParseArgsConfig } from 'node:util';

import pino, { type Logger } from 'pino';
import pretty from 'pino-pretty';

// Bad usage: the command prints the reason and its usage, exit status 2.
export class UsageError extends Error {}

export interface Command {
  usage: string;
  run(args: string[]): Promise<number>;
}

type Options = Record<string, { type: 'string' | 'boolean'; multiple?: boolean }>;
type Values<T extends Options> = {
  [K in keyof T]?: T[K]['type'] extends 'boolean' ? boolean : T[K]['multiple'] extends true ? string[] : string;
} & { help?: boolean };

export function parse<T extends Options>(
  args: string[],
  options: T,
  positionals: { min: number; max: number; names: string },
): { values: Values<T>; positionals: string[] } {
  let parsed: { values: Record<string, unknown>; positionals: string[] };
  try {
    const config: ParseArgsConfig = { args, options: { ...options, help: { type: 'boolean', short: 'h' } }, allowPositionals: true, strict: true };
    parsed = parseArgs(config) as typeof parsed;
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const n = parsed.positionals.length;
  if (parsed.values.help !== true && (n < positionals.min || n > positionals.max)) {
    throw new UsageError(n < positionals.min ? `missing ${positionals.names}` : `unexpected argument '${parsed.positionals[positionals.max]}'`);
  }
  return { values: parsed.values as Values<T>, positionals: parsed.positionals };
}

const SIZE_UNITS: Record<string, number> = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 };

// Plain bytes or a K/M/G/T (binary) suffix, optionally followed by "iB" or "B".
export function parseSize(text: string, flag: string, options: { allowZero?: boolean } = {}): number {
  const m = /^(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?$/i.exec(text.trim());
  if (m === null) throw new UsageError(`${flag}: '${text}' is not a size (use bytes or a K, M, G or T suffix, e.g. 64G)`);
  const bytes = Number(m[1]) * SIZE_UNITS[m[2]!.toUpperCase()]!;
  if (!Number.isSafeInteger(bytes) || bytes < 0 || (bytes === 0 && options.allowZero !== true)) {
    throw new UsageError(`${flag}: '${text}' is not a whole, ${options.allowZero === true ? 'non-negative' : 'positive'} number of bytes`);
  }
  return bytes;
}

export function parseHostPort(text: string, flag: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:]+)\]|([^:]+)):(\d+)$/.exec(text);
  const port = m === null ? NaN : Number(m[3]);
  if (m === null || !Number.isInteger(port) || port < 0 || port > 65535) {
    throw new UsageError(`${flag}: '${text}' is not HOST:PORT (e.g. 127.0.0.1:10809)`);
  }
  return { host: m[1] ?? m[2]!, port };
}

export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = bytes;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`;
}

// `[#######.............] 35%  1.2 GiB of 3.4 GiB, 410 MiB/s, ETA 6 s`
export function progressBar(doneBytes: number, totalBytes: number, bytesPerSecond: number, etaSeconds: number | undefined): string {
  const eta = etaSeconds === undefined ? 'ETA unknown' : `ETA ${etaSeconds.toFixed(0)} s`;
  return `${bar(doneBytes, totalBytes)}  ${formatBytes(doneBytes)} of ${formatBytes(totalBytes)}, ${formatBytes(bytesPerSecond)}/s, ${eta}`;
}

// `[#######.............] 35%`
export function bar(done: number, total: number): string {
  const width = 20;
  const fraction = total <= 0 ? 1 : Math.min(1, done / total);
  const filled = Math.round(fraction * width);
  return `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${(fraction * 100).toFixed(0)}%`;
}

// Logs on stderr (stdout stays free for results and for NBD in stdio mode):
// JSON, or readable lines when stderr is a terminal.
export function stderrLogger(level = process.env.BLOCKWAL_LOG ?? 'info'): Logger {
  if (process.stderr.isTTY) return pino({ level }, pretty({ destination: 2, sync: true, ignore: 'pid,hostname' }));
  return pino({ level }, pino.destination({ fd: 2, sync: true }));
}

// A progress line on stderr: rewritten in place on a terminal, every 10% otherwise.
export function progressPrinter(label: string): (p: { doneBytes: number; totalBytes: number }) => void {
  const startedMs = Date.now();
  let lastDecile = -1;
  return ({ doneBytes, totalBytes }) => {
    const fraction = totalBytes === 0 ? 1 : doneBytes / totalBytes;
    const seconds = (Date.now() - startedMs) / 1000;
    const rate = seconds > 0 ? doneBytes / seconds : 0;
    const eta = rate > 0 ? (totalBytes - doneBytes) / rate : 0;
    const line = `${label}: ${formatBytes(doneBytes)} of ${formatBytes(totalBytes)} (${(fraction * 100).toFixed(0)}%), ${formatBytes(rate)}/s, ETA ${eta.toFixed(0)} s`;
    if (process.stderr.isTTY) {
      process.stderr.write(`\r${line}${fraction >= 1 ? '\n' : ''}`);
    } else if (Math.floor(fraction * 10) > lastDecile) {
      lastDecile = Math.floor(fraction * 10);
      process.stderr.write(line + '\n');
    }
  };
}
