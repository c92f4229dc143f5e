// The result model of one bench run, and its three renderings: an aligned
// table on stdout, JSON and an SVG chart under bench/results/.
//
// Anchors are what the disk does without us (fio); subjects are blockwal.
// A ratio is subject / anchor, taken in the same run on the same disk, so it
// survives the drift of absolute numbers on shared machines. A check is an
// absolute figure with a limit (e.g. CPU per operation), kept apart from the
// ratios so a cost is never dressed up as a ratio.
import * as fs from 'node:fs';
import * as path from 'node:path';

import { renderChartSvg } from './chart';

export interface LatencyFigureUs {
  readonly mean: number;
  readonly p50: number;
  readonly p99: number;
}

export interface Figure {
  readonly name: string;
  readonly value: number;
  readonly unit: string;
  readonly cpuUsPerOp?: number;
  readonly latencyUs?: LatencyFigureUs;
  /** Other load on the host during the window, % of all CPUs (noise indicator). */
  readonly otherLoadPct?: number | null;
  readonly detail?: string;
}

export type TargetOp = '>=' | '<=';

export interface Ratio {
  readonly name: string;
  readonly subject: string;
  readonly anchor: string;
  readonly value: number;
  readonly op: TargetOp;
  /** null = informational, no target. */
  readonly target: number | null;
  readonly pass: boolean | null;
}

export interface Check {
  readonly name: string;
  readonly subject: string;
  readonly value: number;
  readonly unit: string;
  readonly op: TargetOp;
  readonly target: number;
  readonly pass: boolean;
}

export interface BenchResult {
  readonly bench: string;
  readonly description: string;
  readonly startedAt: string;
  readonly env: Record<string, string | number>;
  readonly anchors: Figure[];
  readonly subjects: Figure[];
  readonly ratios: Ratio[];
  readonly checks: Check[];
  readonly notes: string[];
}

export function meets(value: number, op: TargetOp, target: number): boolean {
  switch (op) {
    case '>=':
      return value >= target;
    case '<=':
      return value <= target;
    default:
      return assertNever(op);
  }
}

export function ratio(name: string, subject: Figure, anchor: Figure, op: TargetOp, target: number | null): Ratio {
  const value = subject.value / anchor.value;
  return {
    name,
    subject: subject.name,
    anchor: anchor.name,
    value,
    op,
    target,
    pass: target === null ? null : meets(value, op, target),
  };
}

export function check(name: string, subject: string, value: number, unit: string, op: TargetOp, target: number): Check {
  return { name, subject, value, unit, op, target, pass: meets(value, op, target) };
}

/** Missed targets (null-target ratios never count). */
export function failures(result: BenchResult): string[] {
  return [
    ...result.ratios.filter((r) => r.pass === false).map((r) => r.name),
    ...result.checks.filter((c) => !c.pass).map((c) => c.name),
  ];
}

export function renderTable(result: BenchResult): string {
  const lines: string[] = [`${result.bench}: ${result.description}`];
  const env = Object.entries(result.env).map(([k, v]) => `${k}=${v}`);
  lines.push(`  ${env.join('  ')}`);
  const figureRow = (f: Figure): string[] => [
    f.name,
    fmt(f.value),
    f.unit,
    f.latencyUs === undefined ? '' : `p50 ${fmt(f.latencyUs.p50)} µs`,
    f.latencyUs === undefined ? '' : `p99 ${fmt(f.latencyUs.p99)} µs`,
    f.cpuUsPerOp === undefined ? '' : `cpu ${fmt(f.cpuUsPerOp)} µs/op`,
    f.otherLoadPct === undefined || f.otherLoadPct === null ? '' : `other load ${fmt(f.otherLoadPct)} %`,
  ];
  const rows: string[][] = [];
  for (const [title, figures] of [['anchors', result.anchors], ['subjects', result.subjects]] as const) {
    if (figures.length > 0) rows.push([title]);
    for (const f of figures) {
      rows.push(['  ' + f.name, ...figureRow(f).slice(1)]);
      if (f.detail !== undefined) rows.push([`      ${f.detail}`]);
    }
  }
  if (result.ratios.length > 0) rows.push(['ratios']);
  for (const r of result.ratios) {
    const target = r.target === null ? 'no target' : `target ${opSymbol(r.op)} ${r.target}×`;
    rows.push(['  ' + r.name, fmt(r.value), '×', target, verdict(r.pass)]);
  }
  if (result.checks.length > 0) rows.push(['checks']);
  for (const c of result.checks) {
    rows.push(['  ' + c.name, fmt(c.value), c.unit, `target ${opSymbol(c.op)} ${c.target}`, verdict(c.pass)]);
  }
  lines.push(...alignRows(rows));
  for (const note of result.notes) lines.push(`  note: ${note}`);
  return lines.join('\n') + '\n';
}

/** Writes <dir>/<bench>-<timestamp>.json and .svg; returns both paths. */
export function writeResultFiles(result: BenchResult, dir: string): { json: string; svg: string } {
  fs.mkdirSync(dir, { recursive: true });
  const stamp = result.startedAt.replace(/[:.]/g, '-');
  const base = path.join(dir, `${result.bench}-${stamp}`);
  const json = `${base}.json`;
  const svg = `${base}.svg`;
  fs.writeFileSync(json, JSON.stringify(result, null, 2) + '\n');
  fs.writeFileSync(svg, renderChartSvg(result));
  return { json, svg };
}

export function fmt(value: number): string {
  if (!Number.isFinite(value)) return String(value);
  const abs = Math.abs(value);
  if (abs >= 1000) return Math.round(value).toLocaleString('en-US');
  if (abs >= 100) return value.toFixed(0);
  if (abs >= 10) return value.toFixed(1);
  return value.toFixed(2);
}

export function opSymbol(op: TargetOp): string {
  switch (op) {
    case '>=':
      return '≥';
    case '<=':
      return '≤';
    default:
      return assertNever(op);
  }
}

function verdict(pass: boolean | null): string {
  return pass === null ? '' : pass ? 'PASS' : 'FAIL';
}

/** Pads every column to its widest cell; numbers (2nd column) align right. */
function alignRows(rows: string[][]): string[] {
  const tableRows = rows.filter((r) => r.length > 1);
  const columns = Math.max(...tableRows.map((r) => r.length));
  const widths: number[] = [];
  for (let c = 0; c < columns; c++) widths.push(Math.max(0, ...tableRows.map((r) => (r[c] ?? '').length)));
  return rows.map((row) => {
    if (row.length === 1) return row[0]!;
    return row
      .map((cell, c) => (c === 1 ? cell.padStart(widths[c]!) : cell.padEnd(widths[c]!)))
      .join('  ')
      .trimEnd();
  });
}

function assertNever(value: never): never {
  throw new Error(`unreachable: ${String(value)}`);
}
