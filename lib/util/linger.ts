// A callback that waits a little for something else to do its job: arm()
// schedules it once (arming again while armed changes nothing), cancel()
// drops it, as when a frame that carries the same news goes out first. The
// timer never keeps the process alive.
export class Linger {
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly ms: number,
    private readonly fire: () => void,
  ) {}

  arm(): void {
    if (this.timer !== undefined) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.fire();
    }, this.ms);
    this.timer.unref();
  }

  cancel(): void {
    if (this.timer === undefined) return;
    clearTimeout(this.timer);
    this.timer = undefined;
  }
}
