// A self-contained SVG bar chart of a result's ratios and checks against their
// targets. Hand-written markup, no dependencies, readable in any browser.
//
// One row per figure, each on its own scale (0 .. 1.25 × max(value, target)),
// because ratios (×) and checks (µs) do not share a unit. The dashed line is
// the target; the bar is green when the target is met, red when missed, grey
// when the row has no target.
import type { BenchResult, TargetOp } from './report';
import { fmt, opSymbol } from './report';

const WIDTH = 840;
const LABEL_W = 250;
const BAR_X = LABEL_W + 10;
const BAR_W = 340;
const ROW_H = 34;
const TOP = 56;
const COLOR = { pass: '#2e9e48', fail: '#d33b3b', none: '#8a8f98' } as const;

interface Row {
  readonly label: string;
  readonly value: number;
  readonly valueText: string;
  readonly target: number | null;
  readonly op: TargetOp;
  readonly pass: boolean | null;
  /** A faint reference line (1× for ratios without a target). */
  readonly reference: number | null;
}

export function renderChartSvg(result: BenchResult): string {
  const rows: Row[] = [
    ...result.ratios.map((r) => ({
      label: r.name,
      value: r.value,
      valueText: `${fmt(r.value)}×`,
      target: r.target,
      op: r.op,
      pass: r.pass,
      reference: r.target === null ? 1 : null,
    })),
    ...result.checks.map((c) => ({
      label: c.name,
      value: c.value,
      valueText: `${fmt(c.value)} ${c.unit}`,
      target: c.target,
      op: c.op,
      pass: c.pass,
      reference: null,
    })),
  ];
  const height = TOP + rows.length * ROW_H + 30;
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${height}" viewBox="0 0 ${WIDTH} ${height}" font-family="sans-serif" font-size="13">`,
    `<rect width="100%" height="100%" fill="#ffffff"/>`,
    `<text x="12" y="24" font-size="16" font-weight="bold">${esc(result.bench)}: ratios and checks against targets</text>`,
    `<text x="12" y="42" fill="#555">${esc(subtitle(result))}</text>`,
  ];
  rows.forEach((row, i) => parts.push(renderRow(row, TOP + i * ROW_H)));
  parts.push(
    `<text x="12" y="${height - 10}" fill="#555" font-size="11">dashed line = target (≥: reach it, ≤: stay under it); green = met, red = missed, grey = no target</text>`,
    '</svg>',
  );
  return parts.join('\n') + '\n';
}

function renderRow(row: Row, y: number): string {
  const scaleMax = 1.25 * Math.max(finiteOr0(row.value), row.target ?? 0, row.reference ?? 0, Number.MIN_VALUE);
  const barLen = Math.max(0, Math.min(BAR_W, (finiteOr0(row.value) / scaleMax) * BAR_W));
  const color = row.pass === null ? COLOR.none : row.pass ? COLOR.pass : COLOR.fail;
  const mid = y + ROW_H / 2;
  const out = [
    `<text x="${LABEL_W}" y="${mid + 4}" text-anchor="end">${esc(row.label)}</text>`,
    `<rect x="${BAR_X}" y="${y + 7}" width="${BAR_W}" height="${ROW_H - 14}" fill="#f1f2f4"/>`,
    `<rect x="${BAR_X}" y="${y + 7}" width="${barLen.toFixed(1)}" height="${ROW_H - 14}" fill="${color}"/>`,
  ];
  let text = row.valueText;
  if (row.reference !== null) {
    const rx = BAR_X + (row.reference / scaleMax) * BAR_W;
    out.push(
      `<line x1="${rx.toFixed(1)}" y1="${y + 3}" x2="${rx.toFixed(1)}" y2="${y + ROW_H - 3}" stroke="#999" stroke-width="1"/>`,
    );
    text += `  (no target; line at ${row.reference}×)`;
  }
  if (row.target !== null) {
    const tx = BAR_X + (row.target / scaleMax) * BAR_W;
    out.push(
      `<line x1="${tx.toFixed(1)}" y1="${y + 3}" x2="${tx.toFixed(1)}" y2="${y + ROW_H - 3}" stroke="#222" stroke-width="1.5" stroke-dasharray="4 3"/>`,
    );
    text += `  (target ${opSymbol(row.op)} ${row.target})`;
  }
  out.push(`<text x="${BAR_X + BAR_W + 8}" y="${mid + 4}">${esc(text)}</text>`);
  return out.join('\n');
}

function subtitle(result: BenchResult): string {
  const env = result.env;
  const parts = [result.startedAt, `host ${env.host ?? '?'}`, `${env.fs ?? '?'} at ${env.dir ?? '?'}`];
  parts.push(`${env.measureSeconds ?? '?'} s per measurement`);
  return parts.join(' · ');
}

function finiteOr0(v: number): number {
  return Number.isFinite(v) ? v : 0;
}

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}
