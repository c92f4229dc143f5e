// Argument parsing for the `blockwal` command. Each subcommand parses its own
// flags and calls into the library; exit codes: 0 ok, 1 runtime failure,
// 2 bad usage, always with a one-line reason on stderr.
import { runDemo } from './demo';

const USAGE = `usage: blockwal <command> [options]

commands:
  demo        a guided tour of the storage core on a temporary directory

Run \`blockwal <command> --help\` for a command's options.`;

export async function runCli(args: string[]): Promise<number> {
  const [command, ...rest] = args;
  if (command === undefined || command === '--help' || command === '-h') {
    process.stdout.write(USAGE + '\n');
    return command === undefined ? 2 : 0;
  }
  switch (command) {
    case 'demo':
      return runDemo(rest);
    default:
      process.stderr.write(`blockwal: unknown command '${command}'\n${USAGE}\n`);
      return 2;
  }
}
