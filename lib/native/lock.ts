// Exclusive advisory locks on a file (flock), held until released.
import { addon } from './addon';
import { nativeCall } from './errors';

interface RawLock {
  lockExclusive(path: string): number;
  unlock(fd: number): void;
}

export class FileLock {
  private fd: number;

  private constructor(
    readonly path: string,
    fd: number,
  ) {
    this.fd = fd;
  }

  // Throws ERR_LOCKED when another handle (this process or another) holds it.
  static acquire(path: string): FileLock {
    const raw = addon() as unknown as RawLock;
    return new FileLock(path, nativeCall(() => raw.lockExclusive(path)));
  }

  release(): void {
    if (this.fd < 0) return;
    (addon() as unknown as RawLock).unlock(this.fd);
    this.fd = -1;
  }
}
