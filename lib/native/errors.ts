// Typed errors from the native layer. The addon throws or reports plain Errors
// carrying `code` (and `errno`, `errnoName`, `syscall` for system calls);
// toBlockwalError gives them one class so callers can switch on `code`.

export class BlockwalError extends Error {
  readonly code: string;
  readonly errno: number | undefined;
  readonly errnoName: string | undefined;
  readonly syscall: string | undefined;
  // Further facts the addon attached (e.g. segmentSeq, offsetBytes, reason).
  readonly details: Readonly<Record<string, unknown>>;

  constructor(
    code: string,
    message: string,
    opts: {
      errno?: number;
      errnoName?: string;
      syscall?: string;
      cause?: unknown;
      details?: Record<string, unknown>;
    } = {},
  ) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'BlockwalError';
    this.code = code;
    this.errno = opts.errno;
    this.errnoName = opts.errnoName;
    this.syscall = opts.syscall;
    this.details = opts.details ?? {};
  }
}

interface RawNativeError {
  message: string;
  code?: unknown;
  errno?: unknown;
  errnoName?: unknown;
  syscall?: unknown;
}

// Converts anything the addon threw or reported into a BlockwalError; plain
// TypeError/RangeError from argument checks pass through unchanged.
export function toBlockwalError(err: unknown): Error {
  if (err instanceof BlockwalError) return err;
  if (err instanceof TypeError || err instanceof RangeError) return err;
  if (err instanceof Error) {
    const raw = err as unknown as RawNativeError;
    if (typeof raw.code === 'string') {
      const details: Record<string, unknown> = {};
      for (const [key, value] of Object.entries(err)) {
        if (!['code', 'errno', 'errnoName', 'syscall', 'message', 'stack'].includes(key)) details[key] = value;
      }
      return new BlockwalError(raw.code, raw.message, {
        errno: typeof raw.errno === 'number' ? raw.errno : undefined,
        errnoName: typeof raw.errnoName === 'string' ? raw.errnoName : undefined,
        syscall: typeof raw.syscall === 'string' ? raw.syscall : undefined,
        details,
      });
    }
    return err;
  }
  return new Error(String(err));
}

// Runs a native call and rethrows its failure as a BlockwalError.
export function nativeCall<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw toBlockwalError(err);
  }
}
