// The `blockwal` command: each subcommand parses its own flags and calls the
// library. Exit status 0 on success, 1 on a runtime failure, 2 on bad usage,
// always with a one-line reason on stderr.
import { type Command, UsageError } from './args';
import { create } from './create';
import { demo } from './demo';
import { checksum, exportCommand } from './offline';
import { serve } from './serve';
import { status } from './status';

const COMMANDS: Record<string, Command> = { create, serve, status, export: exportCommand, checksum, demo };

const USAGE = `usage: blockwal <command> [options]

commands:
  create DIR --size SIZE   make a new volume
  serve DIR                serve a volume over NBD (TCP, Unix socket or stdin/stdout)
  status DIR|URL           a volume's or a running server's state (--json)
  export DIR FILE          the volume's content as a raw image (offline)
  checksum DIR             XXH3-64 of the volume's content (offline)
  demo                     a guided tour on a temporary directory

Run \`blockwal <command> --help\` for a command's options.`;

export async function runCli(args: string[]): Promise<number> {
  const [name, ...rest] = args;
  if (name === undefined || name === '--help' || name === '-h') {
    (name === undefined ? process.stderr : process.stdout).write(USAGE + '\n');
    return name === undefined ? 2 : 0;
  }
  const command = COMMANDS[name];
  if (command === undefined) {
    process.stderr.write(`blockwal: unknown command '${name}'\n${USAGE}\n`);
    return 2;
  }
  try {
    return await command.run(rest);
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`blockwal ${name}: ${err.message}\n${command.usage}\n`);
      return 2;
    }
    process.stderr.write(`blockwal ${name}: ${oneLine(err)}\n`);
    return 1;
  }
}

function oneLine(err: unknown): string {
  const message = err instanceof Error ? err.message : String(err);
  return message.split('\n')[0]!;
}
