// What a connection shares with its server: limits, counters, the request
// observer and the export list. The server owns them; connections read the
// limits and mutate the counters in place.
import type { Connection } from './connection';
import type { NbdExport } from './backend';
import type { CommandName } from './protocol';

export interface ConnectionLimits {
  maxRequestsInFlight: number;
  maxBytesInFlight: number;
  handshakeTimeoutMs: number;
  maxOptions: number;
}

// Counters shared by every connection of a server (mutated in place).
export interface Counters {
  connectionsAccepted: number;
  requests: Record<CommandName, number>;
  // Data bytes clients read (READ replies) and wrote (WRITE payloads), successful requests only.
  bytesRead: number;
  bytesWritten: number;
  // Requests answered with an error.
  errors: number;
  protocolViolations: number;
  // Gauges: requests and data bytes held by connections (parsed, not yet replied).
  requestsInFlight: number;
  bytesInFlight: number;
}

export type RequestObserver = (command: string, bytes: number, seconds: number, ok: boolean) => void;

// What a connection needs from its server.
export interface ConnectionHost {
  readonly counters: Counters;
  readonly limits: ConnectionLimits;
  readonly onRequest: RequestObserver | undefined;
  readonly shuttingDown: boolean;
  // '' names the default export.
  findExport(name: string): NbdExport | undefined;
  listExports(): readonly NbdExport[];
  connectionClosed(conn: Connection): void;
}
