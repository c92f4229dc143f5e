// What the NBD server serves: one export's storage. The server does the
// protocol (bounds checks, flags, replies); the backend does the I/O.
// lib/node adapts a Volume to it; tests use an in-memory one.

export interface Extent {
  lengthBytes: number;
  // NBD_STATE_HOLE: no storage allocated (reads return zeros).
  hole: boolean;
  // NBD_STATE_ZERO: reads return zeros.
  zero: boolean;
}

export interface ZeroOptions {
  fua: boolean;
  // NBD_CMD_FLAG_NO_HOLE: the range must stay allocated.
  noHole: boolean;
  // NBD_CMD_FLAG_FAST_ZERO: fail with an error whose `code` is 'ERR_NOT_FAST' rather than zero slowly.
  fastZero: boolean;
}

// Errors thrown by a backend map to NBD error values by `code`:
// ERR_OUT_OF_RANGE / ERR_BAD_OFFSET / ERR_BAD_LENGTH / ERR_TOO_LARGE -> EINVAL,
// ERR_READ_ONLY -> EPERM, ERR_NO_SPACE -> ENOSPC, ERR_NOT_FAST -> ENOTSUP,
// ERR_SHUTDOWN / ERR_CLOSED -> ESHUTDOWN, anything else -> EIO.
export interface NbdBackend {
  readonly sizeBytes: number;
  readonly readOnly: boolean;
  // The server never modifies the returned bytes. They may be a view of
  // backend memory, which the backend must leave unchanged until the reply
  // has been sent (large reads go to the socket by reference, after the
  // promise has settled).
  read(offsetBytes: number, lengthBytes: number): Promise<Uint8Array>;
  // Optional: the server holds no reference to `data` (a read's result) any
  // more: its reply has been written, or dropped with its connection. Called
  // at most once per result; a result whose reply was never queued (the
  // connection ended while the read ran) is not handed back.
  readDone?(data: Uint8Array): void;
  // `data` is a view of the server's input buffer, valid only until the
  // returned promise settles: a backend that keeps it longer must copy it.
  // What the promise resolves with is not used.
  write(offsetBytes: number, data: Uint8Array, fua: boolean): Promise<unknown>;
  // Durable: every write completed (replied to) on any connection before this call.
  flush(): Promise<void>;
  trim(offsetBytes: number, lengthBytes: number, fua: boolean): Promise<void>;
  writeZeroes(offsetBytes: number, lengthBytes: number, options: ZeroOptions): Promise<void>;
  // A hint to bring the range into cache; may do nothing.
  cache(offsetBytes: number, lengthBytes: number): Promise<void>;
  // Extents covering [offset, offset+length) in order, at least one, each with lengthBytes > 0.
  // They may stop short of the end of the range but never go past it.
  blockStatus(offsetBytes: number, lengthBytes: number): Promise<Extent[]>;
}

export interface NbdExport {
  name: string;
  description: string;
  backend: NbdBackend;
}
