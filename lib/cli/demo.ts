// `blockwal demo`: a short tour on a temporary directory.
import { addon } from '../native/addon';

export async function runDemo(args: string[]): Promise<number> {
  if (args.includes('--help')) {
    process.stdout.write('usage: blockwal demo\n\nRuns a short tour of the storage core in a temporary directory.\n');
    return 0;
  }
  addon();
  process.stdout.write('blockwal: native addon loaded\n');
  return 0;
}
