// What this process has advised for transparent huge pages: the bytes of its
// mappings whose VmFlags carry `hg` (madvise MADV_HUGEPAGE), summed so that
// neighbouring mappings the kernel merged still count whole.
import * as fs from 'node:fs';

// Why huge-page advice cannot be checked here, or undefined when it can.
export function hugePagesMissing(): string | undefined {
  if (!fs.existsSync('/sys/kernel/mm/transparent_hugepage/enabled')) return 'transparent huge pages (kernel)';
  if (!fs.existsSync('/proc/self/smaps')) return '/proc/self/smaps';
  return undefined;
}

export function hugePageAdvisedBytes(): number {
  let total = 0;
  let size = 0;
  for (const line of fs.readFileSync('/proc/self/smaps', 'utf8').split('\n')) {
    if (line.startsWith('Size:')) size = Number(line.split(/\s+/)[1]) * 1024;
    else if (line.startsWith('VmFlags:') && line.split(/\s+/).includes('hg')) total += size;
  }
  return total;
}
